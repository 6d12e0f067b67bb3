"""How `make test` splits the suite over pytest-xdist workers (tests/conftest.py), run for real on a small copy:
each chapter's grading fixture is built once, in one worker, and a test module's module fixture once."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GRADING = '''
import json, os, pytest

@pytest.fixture(scope="module", params=["00_a", "01_b", "02_c"])
def graded(request):
    with open(os.environ["LOG"], "a") as f:
        f.write(json.dumps(["built", request.param, os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")
    return request.param

def test_one(graded): pass
def test_two(graded): pass
def test_three(graded): pass
'''

MODULE = '''
import json, os, pytest

@pytest.fixture(scope="module")
def shared():
    with open(os.environ["LOG"], "a") as f:
        f.write(json.dumps(["built", "shared", os.environ["PYTEST_XDIST_WORKER"]]) + "\\n")

@pytest.mark.parametrize("i", range(6))
def test_uses(shared, i): pass
'''


def test_each_chapters_grading_and_each_module_fixture_is_built_once_in_one_worker(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "tests" / "test_grading.py").write_text(GRADING)
    (tmp_path / "tests" / "test_other.py").write_text(MODULE)
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    log = tmp_path / "log.jsonl"
    result = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadscope", "--no-loadscope-reorder",
                             "-v", "tests"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "LOG": str(log)})
    assert result.returncode == 0, result.stdout + result.stderr
    built = [json.loads(line)[1] for line in log.read_text().splitlines()]
    assert sorted(built) == ["00_a", "01_b", "02_c", "shared"], built   # one build each: no unit split over workers
    assert "2 workers [15 items]" in result.stdout
