# Two commands run the course: `make lab` and `make test`. Both create .venv/ on first use.
#   make lab  PORT=8888 IP=127.0.0.1   serve the course with JupyterLab (no browser is opened), for students
#   make test                           run every test: library, notebooks (nbval), grading round trip
#   make lock                           re-resolve requirements.in into the pinned requirements.txt
#   make gpu-check                      every chapter's gpu preset, briefly, on this machine's GPU: one table (and JSON)
# PIP_ARGS passes extra options to pip, e.g. a CPU-only torch index on a machine whose default torch is CUDA.

PYTHON ?= python3
VENV ?= .venv
PORT ?= 8888
IP ?= 127.0.0.1
PIP_ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
# "The venv is installed"; tests of a copy of the course point it elsewhere, so that the copy never reinstalls .venv/.
VENV_STAMP ?= $(VENV)/.installed
# Tools call each other by name (nbgrader runs `alembic`, Jupyter finds kernels): put the venv first.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: lab test gpu-check notebooks lock instructor roster release collect autograde feedback grades student-edition

$(VENV_STAMP): requirements.txt requirements-nodeps.txt lib/pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "llmscratch needs Python 3.11 or newer; run with PYTHON=python3.11 (or newer)")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt $(PIP_ARGS)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-compile --no-deps -e lib
	@# Byte-compile on every CPU at once (pip does it on one, 44 s of an 84 s install on 2 cores; 20 s this way),
	@# packages' test folders left out (nothing here imports them; one of torch's needs Python 3.12).
	$(BIN)/python -m compileall -q -j 0 -x '/tests?/|/testing/_internal/' $$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') lib/llmscratch >/dev/null
	touch $(VENV_STAMP)

# Containers often run as root, which Jupyter refuses unless told.
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root)

LAB = $(BIN)/jupyter lab --no-browser --ip=$(IP) --port=$(PORT) --ServerApp.root_dir=$(CURDIR) $(ROOT_FLAG)

# Students get JupyterLab without nbgrader's instructor tools (tools/jupyter-student turns them off).
lab: $(VENV_STAMP)
	JUPYTER_CONFIG_PATH=$(CURDIR)/tools/jupyter-student $(LAB)

# One pytest-xdist worker per CPU, one torch thread each; each file (a notebook, a test module) and each chapter's
# grading runs in one worker, the longest first (tests/conftest.py). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= auto
test: $(VENV_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

# GPU_CHECK_ARGS="--device cpu --budget tiny" runs the same code on a CPU in about a minute.
GPU_CHECK_ARGS ?=
gpu-check: $(VENV_STAMP)
	$(BIN)/python -m llmscratch.gpucheck $(GPU_CHECK_ARGS)

lock:
	rm -rf /tmp/llmscratch-lock && $(PYTHON) -m venv /tmp/llmscratch-lock
	/tmp/llmscratch-lock/bin/python -m pip install --quiet -r requirements.in $(PIP_ARGS)
	{ sed -n '1,3p' requirements.txt; /tmp/llmscratch-lock/bin/python -m pip freeze | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/'; } > requirements.txt.new
	mv requirements.txt.new requirements.txt

# ---- instructors (not in the student edition) --------------------------------------------------------------------
# Instructors (README, "For instructors"; CHAPTER=00_language_models and so on):
#   make instructor                     JupyterLab with nbgrader's formgrader and assignment tools
#   make roster ROSTER=students.csv     add students to the gradebook (columns id,first_name,last_name,email)
#   make release CHAPTER=...            record a chapter in the gradebook and release it to the exchange
#   make collect CHAPTER=...            gather submissions: from the exchange, and LMS downloads in grading/downloaded/
#   make autograde CHAPTER=...          run every new submission's visible and hidden tests (STUDENT=id: regrade one)
#   make feedback CHAPTER=...           write feedback (no hidden test in it) and return it through the exchange
#   make grades                         every score into grading/grades.csv
#   make student-edition DEST=...       the course without answers or hidden tests, to publish for students
#   make notebooks                      regenerate notebooks/ (student versions) from solutions/ with nbgrader
NBGRADER = $(BIN)/python -m nbgrader
CHAPTERS = $(notdir $(wildcard solutions/[0-9]*))
need_chapter = $(if $(filter $(CHAPTER),$(CHAPTERS)),,$(error set CHAPTER to one of: $(CHAPTERS)))
ROSTER ?=
DEST ?=
DUE ?=
# autograde and feedback with STUDENT=id: only that student, graded again (a resubmission)
STUDENT ?=

instructor: $(VENV_STAMP)
	$(LAB)

notebooks: $(VENV_STAMP)
	$(BIN)/python -m tools.release

roster: $(VENV_STAMP)
	$(if $(ROSTER),,$(error set ROSTER to a CSV file with columns id,first_name,last_name,email))
	$(NBGRADER) db student import $(ROSTER)

# --force: notebooks/ is committed, and nbgrader would otherwise skip it and record nothing in the gradebook.
release: $(VENV_STAMP)
	$(need_chapter)
	$(NBGRADER) generate_assignment $(CHAPTER) --force
	$(if $(DUE),$(NBGRADER) db assignment add $(CHAPTER) --duedate="$(DUE)")
	$(NBGRADER) release_assignment $(CHAPTER) --force

collect: $(VENV_STAMP)
	$(need_chapter)
	$(NBGRADER) collect $(CHAPTER) --update
	if [ -d grading/downloaded/$(CHAPTER)/archive ]; then $(NBGRADER) zip_collect $(CHAPTER) --force; fi

autograde: $(VENV_STAMP)
	$(need_chapter)
	$(NBGRADER) autograde $(CHAPTER) $(if $(STUDENT),--student=$(STUDENT) --force)

feedback: $(VENV_STAMP)
	$(need_chapter)
	$(NBGRADER) generate_feedback $(CHAPTER) $(if $(STUDENT),--student=$(STUDENT) --force)
	@# Through the exchange to the students who submitted there (their submission has a timestamp.txt); LMS
	@# students get their file from grading/feedback/<student>/ by hand.
	for s in $$(cd grading/feedback && ls); do if [ -f grading/feedback/$$s/$(CHAPTER)/timestamp.txt ]; then \
	  $(NBGRADER) release_feedback $(CHAPTER) --student=$$s || exit 1; fi; done

grades: $(VENV_STAMP)
	$(NBGRADER) export --to grading/grades.csv

student-edition: $(VENV_STAMP)
	$(if $(DEST),,$(error set DEST to an empty folder, e.g. DEST=../llmscratch-student))
	$(BIN)/python -m tools.edition $(DEST)
