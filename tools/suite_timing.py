"""A pytest plugin for CI logs (.ci/run: `-p tools.suite_timing`): at the end, the suite's wall time and its five
slowest parts. A part is one test file or one notebook, its fixtures included (the grading round trip's chapters
are graded in the session fixture of tests/test_grading.py, so they count there)."""

import time
from collections import defaultdict

_start = time.perf_counter()
_parts: dict[str, float] = defaultdict(float)


def pytest_sessionstart(session):
    global _start
    _start = time.perf_counter()


def pytest_runtest_logreport(report):
    _parts[report.nodeid.split("::")[0]] += report.duration   # setup, call and teardown alike


def pytest_terminal_summary(terminalreporter):
    wall = time.perf_counter() - _start
    terminalreporter.section("suite time")
    terminalreporter.write_line(f"pytest: {wall:.0f} s of wall time; the five slowest parts:")
    for part, seconds in sorted(_parts.items(), key=lambda kv: -kv[1])[:5]:
        terminalreporter.write_line(f"{seconds:8.1f} s  {part}")
