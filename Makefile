# Two entry points (see README):  `make demo` sets up and runs the embedded pipeline;  `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines install the exact versions (with hashes) of requirements-cpu.lock: the ones the committed demo was made
# with (Linux x86_64, Python 3.11, the local torch 2.13.0 CPU wheel). GPU machines: LOCK= (see README).
LOCK ?= requirements-cpu.lock
CONSTRAINTS ?= constraints-cpu.txt
PIP := $(BIN)/pip --disable-pip-version-check
# uv installs the lock into the venv (measured here: 11 s, where pip took 3.7 min); uv itself is pinned with its hashes
# in requirements-bootstrap.lock and installed by pip. The local torch CPU wheel is found where pip finds it.
# --compile-bytecode: as pip does; uv does not by default, and where PYTHONDONTWRITEBYTECODE is set (it is on this
# machine) every stage process would compile its imports again (import mlflow: 4.7 s instead of 1.6 s).
UV := $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)

.PHONY: setup init demo test test-fast repro lock clean-data

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK) requirements-bootstrap.lock
ifneq ($(LOCK),)
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "$(LOCK) is for Python 3.11 \
	and $(PYTHON) is $$($(PYTHON) -V 2>&1) (fix: make setup PYTHON=python3.11, or LOCK= for an unpinned install)"; exit 1; }
endif
	$(PYTHON) -m venv $(VENV)
ifneq ($(LOCK),)
	$(PIP) install --quiet --require-hashes --no-deps -r requirements-bootstrap.lock
	$(UV) --require-hashes --no-deps -r $(LOCK)
	$(UV) --no-deps --no-build-isolation -e .
else
	$(PIP) install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS),) -e '.[test]'
endif
	touch $@

# GPU machines: the lock's versions as constraints, less torch (a CUDA build) and the hashes of the CPU files:
#   make constraints-gpu.txt && make setup LOCK= CONSTRAINTS=constraints-gpu.txt
constraints-gpu.txt: $(LOCK)
	grep -E '^[A-Za-z0-9_.-]+==' requirements-cpu.lock | sed 's/ *\\$$//' | grep -v '^torch==' > $@

# Refresh requirements-cpu.lock after changing dependencies in pyproject.toml or constraints-cpu.txt, then re-record
# the demo (README "Reproducing").
lock:
	$(PYTHON) -m pip install --quiet pip-tools
	$(PYTHON) -m piptools compile --quiet --generate-hashes --allow-unsafe --strip-extras --extra test \
	  --no-emit-find-links --no-emit-index-url -c constraints-cpu.txt -o requirements-cpu.lock pyproject.toml
	grep -E '^uv==' requirements-bootstrap.lock | sed 's/ *\\$$//' | $(PYTHON) -m piptools compile --quiet \
	  --generate-hashes --no-emit-find-links --no-emit-index-url -o requirements-bootstrap.lock -

# A git repo and a DVC project are part of set-up where missing (e.g. from a source tarball).
# The DVC cache links outputs into the workspace instead of copying them (a 15 GB policy stored once, committed in
# about a second): reflink where the filesystem has it (copy-on-write: safe), else hard links (DVC makes the files
# read-only; edit an output by hand only after `dvc unprotect <path>`), else copies. Machine-specific, so it goes into
# .dvc/config.local; one already set there is kept (README "Disk and hashing at model scale").
init: setup
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 || git init -q
	@[ -d .dvc ] || $(BIN)/dvc init -q
	@$(BIN)/dvc config core.analytics false
	@$(BIN)/dvc config --local cache.type >/dev/null 2>&1 || { t=$$(mktemp -p .dvc); \
	  if cp --reflink=always $$t $$t.r 2>/dev/null; then c=reflink,copy; else c=hardlink,copy; fi; rm -f $$t $$t.r; \
	  $(BIN)/dvc config --local cache.type $$c && echo "dvc cache.type: $$c (.dvc/config.local)"; }

repro: init
	export PATH="$(CURDIR)/$(BIN):$$PATH" && alignloop render --check && alignloop repro

demo: repro
	export PATH="$(CURDIR)/$(BIN):$$PATH" && dvc metrics show data/report/summary.json && cat data/report/rounds.json \
	  && (alignloop registry list || echo "The MLflow registry of this copy is empty: the register stages came up to date \
	from git. Fill it: dvc repro --force --single-item register_r1 (then register_r2, register_r3).")

# Random order (pytest-randomly) with a printed seed (`make test SEED=N` replays it), two workers, a module per worker.
ifeq ($(SEED),)
SEED := $(shell od -An -N2 -tu2 /dev/urandom | tr -d ' ')
endif
# --no-loadscope-reorder: xdist would otherwise queue modules by test count, so the minutes-long modules (few tests
# each) ran last; tests/conftest.py queues them longest first instead.
PYTEST := echo "test order seed: $(SEED) (replay: make test SEED=$(SEED))" && python -m pytest -q -n 2 --dist loadfile \
  --no-loadscope-reorder -p randomly --randomly-seed=$(SEED)

test: init
	export PATH="$(CURDIR)/$(BIN):$$PATH" && $(PYTEST)

# Unit and pure-function tests only (no pipeline projects, no subprocess stages): the inner loop.
test-fast: init
	export PATH="$(CURDIR)/$(BIN):$$PATH" && $(PYTEST) -m "not slow"

clean-data:
	rm -rf data/raw data/curated data/models data/rounds data/eval data/report dvc.lock mlflow.db mlartifacts
