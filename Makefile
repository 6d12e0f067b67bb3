# Two commands run the course: `make lab` and `make test`. Both create .venv/ on first use.
#   make lab  PORT=8888 IP=127.0.0.1   serve the course with JupyterLab (no browser is opened)
#   make test                           run every test: library, notebooks (nbval), grading round trip
#   make notebooks                      regenerate notebooks/ (student versions) from solutions/ with nbgrader
#   make lock                           re-resolve requirements.in into the pinned requirements.txt
# PIP_ARGS passes extra options to pip, e.g. a CPU-only torch index on a machine whose default torch is CUDA.

PYTHON ?= python3
VENV ?= .venv
PORT ?= 8888
IP ?= 127.0.0.1
PIP_ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tools call each other by name (nbgrader runs `alembic`, Jupyter finds kernels): put the venv first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: lab test notebooks lock

$(STAMP): requirements.txt requirements-nodeps.txt lib/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "llmscratch needs Python 3.11 or newer; run with PYTHON=python3.11 (or newer)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt $(PIP_ARGS)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e lib
	touch $(STAMP)

# Containers often run as root, which Jupyter refuses unless told.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

lab: $(STAMP)
	$(BIN)/jupyter lab --no-browser --ip=$(IP) --port=$(PORT) --ServerApp.root_dir=$(CURDIR) $(ROOT_FLAG)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

notebooks: $(STAMP)
	$(BIN)/python -m tools.release

lock:
	rm -rf /tmp/llmscratch-lock && $(PYTHON) -m venv /tmp/llmscratch-lock
	/tmp/llmscratch-lock/bin/python -m pip install --quiet -r requirements.in $(PIP_ARGS)
	{ sed -n '1,3p' requirements.txt; /tmp/llmscratch-lock/bin/python -m pip freeze | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > requirements.txt.new
	mv requirements.txt.new requirements.txt
