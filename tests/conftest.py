import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for `tools`

# The test suite validates notebooks the way CI does: with their smallest preset. Notebook kernels
# started by nbval and nbgrader inherit this variable.
os.environ.setdefault("CI", "true")

# nbgrader runs its database migrations with the `alembic` command: make the one installed beside
# this Python findable even when the virtual environment is not activated.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

# `make test` runs the suite on one pytest-xdist worker per CPU (see pytest_xdist_auto_num_workers). Each worker, and
# every kernel and subprocess it starts (they inherit the environment), then computes on one torch thread: two
# processes of two threads each on two cores would fight over them (5-30x slower).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["LLMSCRATCH_THREADS"] = "1"

import pytest  # noqa: E402

# Work units that take longest go first, so that no long one is left running alone at the end (measured on 2 cores:
# the grading of chapters 08-11 loads a 135M-parameter model in every submission). Everything else keeps its order.
SLOW_FIRST = ("tests/test_instructor.py", "grading:10_", "grading:09_", "grading:11_", "grading:08_",
              "solutions/10_", "tests/test_gpucheck.py", "tests/test_train.py", "tests/test_preference.py",
              "grading:07_", "grading:06_", "grading:00_", "grading:05_", "tests/test_rl.py", "solutions/09_",
              "solutions/11_", "tests/test_sft.py", "tests/test_llama.py", "tests/test_release.py")


def pytest_xdist_auto_num_workers(config):
    from llmscratch.env import available_cpus
    return available_cpus()


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's loadgroup, and a notebook's cells in one unit: the "@group" that xdist appends to a test's id
    does not reach the controller from nbval's cells."""
    from xdist.scheduler import LoadGroupScheduling

    class Scheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid):
            return nodeid.split("::")[0] if ".ipynb::" in nodeid else super()._split_scope(nodeid)

    return Scheduling(config, log)


def work_unit(item) -> str | None:
    """The tests that must run in one process, or None for a test that may run anywhere: a notebook's cells share
    its kernel; one chapter's grading tests share its graded submissions; tests that share a module-scoped fixture
    share its value."""
    path = item.nodeid.split("::")[0]
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "graded" in callspec.params:
        return f"grading:{callspec.params['graded']}"
    if path.endswith(".ipynb"):
        return path
    defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    if any(d.scope != "function" and d.baseid for fixture in defs.values() for d in fixture):
        return path
    return None


@pytest.hookimpl(tryfirst=True)   # before pytest-xdist reads the marks
def pytest_collection_modifyitems(config, items):
    units = {item: work_unit(item) for item in items}
    for item, unit in units.items():
        if unit is not None:   # xdist appends "@group" to the test's id: no "/" or "." in it
            item.add_marker(pytest.mark.xdist_group(re.sub(r"\W", "_", unit)))

    def rank(item):
        key = units[item] or item.nodeid
        return next((i for i, prefix in enumerate(SLOW_FIRST) if key.startswith(prefix)), len(SLOW_FIRST))
    items.sort(key=rank)   # stable: the order within a rank (and so within a unit) is pytest's
