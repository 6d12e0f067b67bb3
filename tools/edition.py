"""Build the student edition: the course without its answers, its hidden tests or its instructor tools.

    python -m tools.edition DEST      # what `make student-edition DEST=...` runs; DEST must be empty or absent

DEST gets the student notebooks, the library, the data loaders, `make lab` and `make test` (the library's own
tests), and a README without its instructor parts, as a git repository with one commit, ready to push as its
own public repository (README, "For instructors"). It refuses to finish if an answer or a hidden test would go
with it.
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tools import colab

ROOT = Path(__file__).resolve().parents[1]

# What stays with the instructors: the answers, the tests that read them, and the tools that grade.
PRIVATE = (
    "solutions/", ".ci/", ".github/", "nbgrader_config.py", "course.toml", "CONTRIBUTING.md",
    "tools/release.py", "tools/grading.py", "tools/edition.py", "tools/colab.py",
    "tests/test_grading.py", "tests/test_release.py", "tests/test_checks.py", "tests/test_instructor.py",
    "tests/cases_",   # correct answers and typical mistakes for every exercise
)
SECRETS = ("### BEGIN SOLUTION", "### BEGIN HIDDEN TESTS")
INSTRUCTOR_BLOCK = re.compile(r"<!-- instructors -->.*?<!-- /instructors -->\n*", re.DOTALL)
STUDENT_BLOCK = re.compile(r"<!-- student-edition\n(.*?)-->\n", re.DOTALL)
MAKEFILE_CUT = "# ---- instructors"
PYTEST_INI = """[pytest]
# The course library's tests: every building block against PyTorch, transformers and the real models.
testpaths = tests
addopts = -p no:cacheprovider
filterwarnings =
    ignore::DeprecationWarning:jupyter_client.*
"""


def repository_files(untracked: bool = True) -> list[str]:
    """The repository's files: committed or staged, and (untracked=True) new ones that git does not ignore."""
    flags = ["--cached", "--others", "--exclude-standard"] if untracked else ["--cached"]
    out = subprocess.run(["git", "ls-files", *flags, "-z"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    return sorted({f for f in out.split("\0") if f and (ROOT / f).is_file()})


def shipped_files() -> list[str]:
    """Git's files only, never a file lying in the working tree (a roster with names and emails, a student's
    submission), less the private ones."""
    return [f for f in repository_files(untracked=False) if not f.startswith(PRIVATE)]


def student_readme(text: str) -> str:
    text = STUDENT_BLOCK.sub(r"\1", INSTRUCTOR_BLOCK.sub("", text))
    text = text.replace(colab.UNPUBLISHED, "Not available for this copy of the course: ask your instructor.")
    text = text.replace(colab.README_BEGIN + "\n", "").replace(colab.README_END + "\n", "")   # make notebooks' markers
    return text.replace("then run every test: library, notebooks, grading round trip", "then run the library's tests")


def student_makefile(text: str) -> str:
    text = text[:text.index(MAKEFILE_CUT)].rstrip() + "\n"
    text = text.replace("run every test: library, notebooks (nbval), grading round trip", "run the library's tests")
    return re.sub(r"^\.PHONY:.*$", ".PHONY: lab test lock", text, flags=re.MULTILINE)


def build(dest: Path) -> list[str]:
    dest = dest.resolve()
    if dest.exists() and any(dest.iterdir()):
        raise SystemExit(f"{dest} is not empty: the student edition is built into an empty or new folder")
    if dest == ROOT or ROOT in dest.parents:
        raise SystemExit(f"{dest} is inside this repository: build the student edition outside it")
    files = shipped_files()
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    (dest / "README.md").write_text(student_readme((ROOT / "README.md").read_text(encoding="utf-8")), encoding="utf-8")
    (dest / "Makefile").write_text(student_makefile((ROOT / "Makefile").read_text(encoding="utf-8")), encoding="utf-8")
    (dest / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
    leaks = [str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()
             and any(s in p.read_text(encoding="utf-8", errors="ignore") for s in SECRETS)]
    if leaks:
        shutil.rmtree(dest)
        raise SystemExit(f"an answer or a hidden test would have gone into the student edition: {leaks}")
    git = ["git", "-c", "user.name=llmscratch", "-c", "user.email=llmscratch@localhost", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "llmscratch, student edition"], cwd=dest, check=True)
    return files


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path, help="an empty or new folder outside this repository")
    dest = parser.parse_args().dest
    files = build(dest)
    print(f"student edition: {len(files)} files in {dest.resolve()} (one commit); push it as its own repository",
          file=sys.stderr)
    left = sorted(set(repository_files()) - set(repository_files(untracked=False)))
    if left:
        print(f"left out, because git does not hold them (commit them first if students need them): {left}",
              file=sys.stderr)
    if not colab.setting()[0]:
        print("course.toml names no public repository ([colab]): on Colab these notebooks cannot install the "
              "library. Set it, run `make notebooks`, commit, and build the edition again.", file=sys.stderr)
