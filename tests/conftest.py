import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for `tools`

# The test suite validates notebooks the way CI does: with their smallest preset. Notebook kernels
# started by nbval and nbgrader inherit this variable.
os.environ.setdefault("CI", "true")
