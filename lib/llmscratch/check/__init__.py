"""Self-checks students run without nbgrader: `check.ch00.softmax(softmax)`.

Each check prints `ok: ...` when the function behaves like the oracle (PyTorch's own ops), and
otherwise raises CheckFailed saying what was expected and what came back, or that the exercise is
not implemented yet. The graded test cells call the same checks, then add hidden tests of their own.
"""

from . import ch00, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch10, ch11
from .core import CheckFailed

__all__ = ["CheckFailed", "ch00", "ch01", "ch02", "ch03", "ch04", "ch05", "ch06", "ch07", "ch08", "ch09", "ch10", "ch11"]
