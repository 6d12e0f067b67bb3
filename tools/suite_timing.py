"""A pytest plugin for CI logs (.ci/run: `-p tools.suite_timing`): at the end, the suite's wall time and every part
over 10 s, grouped: the library's tests, the notebooks, the grading round trip and the instructor's path. A part is
one test file, one notebook or one chapter's grading, fixtures included; its seconds are the time a worker spent on
it (with pytest-xdist the parts run side by side, so they add up to more than the wall time)."""

import time
from collections import defaultdict

GROUPS = ("library", "notebooks", "grading round trip", "instructor path")
INSTRUCTOR = ("tests/test_instructor.py", "tests/test_release.py")
SHOWN = 10.0   # seconds: smaller parts are counted in their group, not listed

_start = time.perf_counter()
_parts: dict[str, float] = defaultdict(float)


def part_of(nodeid: str) -> str:
    path = nodeid.split("::")[0]
    if path == "tests/test_grading.py" and "[" in nodeid:   # one chapter's grading: test_x[chapter]
        return f"{path}[{nodeid.rsplit('[', 1)[1].split(']')[0]}]"
    return path


def group_of(part: str) -> str:
    if part.startswith("solutions/"):
        return "notebooks"
    if part.startswith("tests/test_grading.py"):
        return "grading round trip"
    return "instructor path" if part in INSTRUCTOR else "library"


def pytest_sessionstart(session):
    global _start
    _start = time.perf_counter()


def pytest_runtest_logreport(report):
    _parts[part_of(report.nodeid)] += report.duration   # setup, call and teardown alike


def pytest_terminal_summary(terminalreporter, config):
    wall = time.perf_counter() - _start
    workers = getattr(config.option, "numprocesses", None) or 1
    busy = sum(_parts.values())
    terminalreporter.section("suite time")
    terminalreporter.write_line(f"pytest: {wall:.0f} s of wall time, {busy:.0f} s of test time on {workers} "
                                f"worker{'s' if workers > 1 else ''}; each group, and its parts over {SHOWN:.0f} s:")
    for group in GROUPS:
        parts = {p: s for p, s in _parts.items() if group_of(p) == group}
        terminalreporter.write_line(f"{sum(parts.values()):8.1f} s  {group}")
        for part, seconds in sorted(parts.items(), key=lambda kv: -kv[1]):
            if seconds >= SHOWN:
                terminalreporter.write_line(f"{seconds:12.1f} s  {part}")
