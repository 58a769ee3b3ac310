# `make demo`: set up and run the default experiment. `make test`: set up and run the test suite (CI's).
PYTHON ?= python3
VENV := .venv
DATA_DIR ?= $(abspath ../shared/data)

.PHONY: setup demo test test-fast test-all

setup: $(VENV)/.installed

# torch first and pinned exactly: a looser requirement pulls a multi-GB CUDA build on CPU machines.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[dev,eval,scale,report]"
	touch $@

demo: setup
	$(VENV)/bin/unlearn

# Unit tests plus the end-to-end runs marked `ci` (the default experiment among them): what CI runs.
test: setup
	UNLEARNING_DATA_DIR=$${UNLEARNING_DATA_DIR:-$(DATA_DIR)} $(VENV)/bin/pytest -m "not slow or ci"

test-all: setup
	UNLEARNING_DATA_DIR=$${UNLEARNING_DATA_DIR:-$(DATA_DIR)} $(VENV)/bin/pytest

test-fast: setup
	UNLEARNING_DATA_DIR=$${UNLEARNING_DATA_DIR:-$(DATA_DIR)} $(VENV)/bin/pytest -m "not slow"
