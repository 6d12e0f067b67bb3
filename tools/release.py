"""Regenerate the student notebooks (notebooks/) from the instructor source (solutions/) with nbgrader.

    python -m tools.release               # what `make notebooks` runs: the Colab setting first, then nbgrader
    python -m tools.release --to DIR      # write elsewhere (the tests compare DIR with notebooks/)

The Colab setting (course.toml) goes into every solution's setup cell and the README's badges first
(tools/colab.py), so that the student notebooks carry it.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import nbformat

from tools import colab

ROOT = colab.ROOT


def assignments() -> list[str]:
    """One nbgrader assignment per chapter folder in solutions/."""
    return sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[0].isdigit())


def setup_cell(nb):
    return next(c for c in nb.cells if c.cell_type == "code")


def write_colab_setting() -> None:
    github, ref = colab.setting()
    for name in assignments():
        path = ROOT / "solutions" / name / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cell = setup_cell(nb)
        source = colab.with_setup_block(cell.source, github, ref)
        if source != cell.source:
            cell.source = source
            nbformat.write(nb, path)
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = colab.with_badges(text, github, ref, assignments())
    if new != text:
        readme.write_text(new, encoding="utf-8")


def release(release_dir: Path | None = None) -> None:
    for name in assignments():
        cmd = [sys.executable, "-m", "nbgrader", "generate_assignment", name, "--force", "--no-db",
               "--log-level=WARN"]
        if release_dir is not None:
            cmd.append(f"--CourseDirectory.release_directory={Path(release_dir).resolve()}")
        subprocess.run(cmd, cwd=ROOT, check=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--to", type=Path, default=None, help="release folder (default: notebooks/)")
    args = parser.parse_args()
    if args.to is None:
        write_colab_setting()
    release(args.to)
