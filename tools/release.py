"""Regenerate the student notebooks (notebooks/) from the instructor source (solutions/) with nbgrader.

    python -m tools.release               # what `make notebooks` runs
    python -m tools.release --to DIR      # write elsewhere (the tests compare DIR with notebooks/)
"""

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def assignments() -> list[str]:
    """One nbgrader assignment per chapter folder in solutions/."""
    return sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir() and p.name[0].isdigit())


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
    release(parser.parse_args().to)
