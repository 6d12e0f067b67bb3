"""Two nbgrader preprocessors that nbgrader_config.py installs: what students see in their feedback, and what
autograding skips.

HideHiddenTests (generate_feedback): nbgrader's feedback shows each test cell as the instructor wrote it, hidden
tests included, and a failed test's traceback quotes the failing line with its expected values. Hidden tests
would then be public after the first cohort. This removes every hidden-test region from the feedback's source and
replaces the traceback of any cell that held one by its last line alone: the exception and its message (even a
failure in the visible test quotes the lines around it), with a note when the failing line was hidden. Write
those messages to teach ("the weights of each query must sum to 1: mask before the softmax"), not to reveal.

SkipWhenGrading (autograde): a code cell tagged `skip-when-grading` (a training run, a plot, a demo that no test
reads) is replaced by a line that says so, which saves most of a chapter's grading time. Only cells that nbgrader
does not grade are skipped, whatever tags a submission carries: a test cell always runs.
"""

import re

from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor

SKIP_TAG = "skip-when-grading"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
HIDDEN_NOTE = "(a hidden test failed; its code is not shown: run the exercise's check and reread the message above)"


class HideHiddenTests(ClearHiddenTests):
    def preprocess_cell(self, cell, resources, cell_index):
        hidden = self._hidden_lines(cell.source) if cell.cell_type == "code" else set()
        if not self._remove_hidden_test_region(cell):
            return cell, resources
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                # Even a failure in the visible test quotes the lines around it, hidden ones included.
                failed_at = re.search(r"Cell In\[\d+\], line (\d+)", ANSI.sub("", "\n".join(output.traceback)))
                last = f"{output.ename}: {output.evalue}" if output.evalue else output.ename
                in_hidden = failed_at is None or int(failed_at.group(1)) in hidden
                output.traceback = [last, HIDDEN_NOTE] if in_hidden else [last]
        return cell, resources

    def _hidden_lines(self, source: str) -> set[int]:
        """The (1-based) line numbers of the hidden-test regions."""
        lines, inside = set(), False
        for number, line in enumerate(source.split("\n"), start=1):
            if self.begin_test_delimeter in line:
                inside = True
            elif self.end_test_delimeter in line:
                inside = False
            elif inside:
                lines.add(number)
        return lines


class SkipWhenGrading(NbGraderPreprocessor):
    def preprocess_cell(self, cell, resources, cell_index):
        graded = "nbgrader" in cell.metadata   # test, answer and setup cells always run
        if cell.cell_type == "code" and SKIP_TAG in cell.metadata.get("tags", []) and not graded:
            cell.source = "# skipped while grading: this cell trains or draws, and no test reads what it makes"
        return cell, resources
