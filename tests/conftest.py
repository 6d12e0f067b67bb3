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
