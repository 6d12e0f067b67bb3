"""nbgrader configuration: solutions/ is the instructor source, notebooks/ the released student version.

Grade with the Makefile's instructor targets (README, "For instructors"), which run nbgrader from this folder
with these settings. All grading state lives in the git-ignored grading/ folder: the gradebook, the exchange,
LMS downloads, submissions, autograded copies, feedback and the exported grades.
"""

import os
import sys

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import (CheckCellMetadata, ClearOutput, DeduplicateIds, GetGrades, OverwriteCells,
                                    OverwriteKernelspec)

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

HERE = os.path.dirname(os.path.abspath(__file__))
GRADING = os.path.join(HERE, "grading")
sys.path.insert(0, HERE)
from tools.grading import HideHiddenTests, SkipWhenGrading  # noqa: E402 (needs HERE on the path)

c.CourseDirectory.root = HERE
c.CourseDirectory.course_id = "llmscratch"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.submitted_directory = os.path.join("grading", "submitted")
c.CourseDirectory.autograded_directory = os.path.join("grading", "autograded")
c.CourseDirectory.feedback_directory = os.path.join("grading", "feedback")
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(GRADING, "gradebook.db")

# The exchange, where release_assignment puts a chapter, students' `nbgrader submit` puts their work and
# release_feedback puts the feedback: a folder in grading/ by default (one machine), or a folder every user can
# write on a shared server (JupyterHub): LLMSCRATCH_EXCHANGE=/srv/nbgrader/exchange.
c.Exchange.root = os.environ.get("LLMSCRATCH_EXCHANGE", os.path.join(GRADING, "exchange"))
# Submissions downloaded from an LMS (Moodle, Canvas, ...) go in grading/downloaded/<chapter>/archive/, one file
# per student, named <student id>_<anything>_<notebook>, e.g. alice_00_language_models.ipynb or Canvas's
# smithalice_late_1234_5678_00_language_models.ipynb: the student id is everything before the first "_".
c.ZipCollectApp.downloaded_directory = os.path.join("grading", "downloaded")   # relative to the course root
c.FileNameCollectorPlugin.named_regexp = r".*/(?P<student_id>[^/_]+)_(?:[^/]*_)?(?P<file_id>\d\d_[a-z_]+\.ipynb)$"
for folder in (GRADING, c.Exchange.root):   # sqlite creates its file, not its folder; the exchange must exist
    os.makedirs(folder, exist_ok=True)

# Only students in the gradebook (make roster) are graded: a submission from an unknown id (a typo in an LMS file
# name) fails with "No student with ID ... exists in the database" instead of adding a phantom student.
c.Autograde.create_student = False

# Restore test cells a student deleted, and grade every test cell with the instructor's original.
c.OverwriteCells.add_missing_cells = True
# Cells tagged skip-when-grading (trainings, plots and demos no test reads) do not run: see tools/grading.py.
c.Autograde.sanitize_preprocessors = [  # nbgrader's own list, SkipWhenGrading added once the tests are restored
    ClearOutput, DeduplicateIds, OverwriteKernelspec, OverwriteCells, SkipWhenGrading, CheckCellMetadata]

# A cell may train a small model on a CPU; anything slower than this is a bug.
c.ExecutePreprocessor.timeout = 300

# nbgrader fails a test cell that wrote anything to stderr. A debug print(..., file=sys.stderr), a logging.warning
# ("WARNING:root:...") or a progress bar in correct code is no error: drop every stderr output before grading.
# Only exceptions fail a test (tests/test_grading.py grades such a submission).
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"(?s).*"

# Feedback shows no hidden test: their code is removed and a failure shows its message only (tools/grading.py).
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
