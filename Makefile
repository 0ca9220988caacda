# Two entry points (see README):  `make demo` sets up and runs the embedded pipeline;  `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU machines: the local torch 2.13.0 CPU wheel, no CUDA packages. GPU machines: CONSTRAINTS= (see README).
CONSTRAINTS ?= constraints-cpu.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: setup init demo test repro clean-data

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(PIP_C) -e '.[test]'
	touch $@

# A git repo and a DVC project are part of set-up where missing (e.g. from a source tarball).
init: setup
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 || git init -q
	@[ -d .dvc ] || $(BIN)/dvc init -q
	@$(BIN)/dvc config core.analytics false

repro: init
	export PATH="$(CURDIR)/$(BIN):$$PATH" && alignloop render --check && dvc repro

demo: repro
	export PATH="$(CURDIR)/$(BIN):$$PATH" && dvc metrics show data/report/summary.json && cat data/report/rounds.json \
	  && alignloop registry list

test: init
	export PATH="$(CURDIR)/$(BIN):$$PATH" && python -m pytest -q

clean-data:
	rm -rf data/raw data/curated data/models data/rounds data/eval data/report dvc.lock mlflow.db mlartifacts
