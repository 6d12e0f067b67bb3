"""nbgrader configuration: solutions/ is the instructor source, notebooks/ the released student version.

Regenerate the student notebooks with `make notebooks`; grade with the usual nbgrader commands
(collect, autograde, generate_feedback, export) run from this folder. All grading state lives in
the git-ignored grading/ folder.
"""

import os

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

HERE = os.path.dirname(os.path.abspath(__file__))

c.CourseDirectory.root = HERE
c.CourseDirectory.course_id = "llmscratch"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "notebooks"
c.CourseDirectory.submitted_directory = os.path.join("grading", "submitted")
c.CourseDirectory.autograded_directory = os.path.join("grading", "autograded")
c.CourseDirectory.feedback_directory = os.path.join("grading", "feedback")
os.makedirs(os.path.join(HERE, "grading"), exist_ok=True)  # sqlite creates the file, not its folder
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(HERE, "grading", "gradebook.db")

# Restore test cells a student deleted, and grade every test cell with the instructor's original.
c.OverwriteCells.add_missing_cells = True

# A cell may train a small model on a CPU; anything slower than this is a bug.
c.ExecutePreprocessor.timeout = 300

# nbgrader fails a test cell that wrote anything to stderr. A debug print(..., file=sys.stderr), a logging.warning
# ("WARNING:root:...") or a progress bar in correct code is no error: drop every stderr output before grading.
# Only exceptions fail a test (tests/test_grading.py grades such a submission).
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"(?s).*"
