"""notebooks/ is exactly what nbgrader generates from solutions/ today, and holds no answers."""

import json

import pytest

from tools.release import ROOT, assignments, release


@pytest.fixture(scope="module")
def fresh_release(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    release(out)
    return out


def notebook_files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def test_every_chapter_is_released():
    assert assignments(), "no chapter folders in solutions/"
    released = {p.parts[0] for p in notebook_files(ROOT / "notebooks")}
    assert released == set(assignments())


def test_committed_student_notebooks_are_up_to_date(fresh_release):
    assert notebook_files(fresh_release) == notebook_files(ROOT / "notebooks")
    for rel in notebook_files(fresh_release):
        generated = json.loads((fresh_release / rel).read_text(encoding="utf-8"))
        committed = json.loads((ROOT / "notebooks" / rel).read_text(encoding="utf-8"))
        assert committed == generated, f"notebooks/{rel} is stale: run `make notebooks` and commit the result"


def test_student_notebooks_hold_no_answers_and_no_outputs():
    for rel in notebook_files(ROOT / "notebooks"):
        nb = json.loads((ROOT / "notebooks" / rel).read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            source = "".join(cell["source"])
            for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS"):
                assert marker not in source, f"{rel}: a '{marker}' block leaked into the student version"
            assert not cell.get("outputs"), f"{rel}: student notebooks must not carry outputs"
