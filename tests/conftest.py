import os
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

# Work units that take longest go first, so that no long one is left running alone at the end (measured on 2 cores,
# cold: the SmolLM2 tests, chapter 10's notebook, each chapter's grading). Everything else keeps its order.
SLOW_FIRST = ("tests/test_instructor.py", "tests/test_gpucheck.py", "tests/test_rl.py", "solutions/10_",
              "tests/test_preference.py", "tests/test_train.py", "solutions/09_", "tests/test_llama.py",
              "tests/test_sft.py", "solutions/11_", "grading:09_", "grading:10_", "grading:08_", "grading:11_",
              "grading:07_", "grading:05_", "solutions/06_", "tests/test_release.py", "grading:03_", "solutions/07_",
              "tests/test_bert.py")


def pytest_xdist_auto_num_workers(config):
    from llmscratch.env import available_cpus
    return available_cpus()


def work_unit(nodeid: str) -> str:
    """The tests that run in one worker, in order: one chapter's grading (they share its graded submissions), or one
    file (a notebook's cells share its kernel; a test module's tests may share a module-scoped fixture)."""
    path = nodeid.split("::")[0]
    if path == "tests/test_grading.py" and nodeid.endswith("]"):   # test_x[chapter]
        return f"grading:{nodeid.rsplit('[', 1)[1][:-1]}"
    return path


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's loadscope with our work units. (Its loadgroup cannot do this: under pytest 9 the "@group" that
    it appends to a marked test's id is lost, so every test of a group became a unit of its own, and two workers
    graded each chapter.)"""
    from xdist.scheduler import LoadScopeScheduling

    class Scheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return work_unit(nodeid)

    return Scheduling(config, log)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        unit = work_unit(item.nodeid)
        return next((i for i, prefix in enumerate(SLOW_FIRST) if unit.startswith(prefix)), len(SLOW_FIRST))
    items.sort(key=rank)   # stable: the order within a rank (and so within a unit) is pytest's
