# Two commands set up a fresh clone: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-optimised bench docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python sims/sweep_beta.py

# Two workers, whole files each (a module's fixtures, notebook runs and compiled programs are built once), the
# longest files first (tests/conftest.py orders them; --no-loadscope-reorder keeps that order).
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) tests

# The same without the cases marked slow (a quick check while working).
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) -m "not slow" tests

# The suite compiled as users run it: tests/conftest.py otherwise turns XLA's optimisations off for the tests,
# whose time is mostly compiling (slower: about the test target's time before session 19).
test-optimised: $(STAMP)
	JAX_DISABLE_MOST_OPTIMIZATIONS=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(XDIST) tests

# Every benchmark, each against its baseline in the same process (about 5 minutes on 2 cores).
bench: $(STAMP)
	$(BIN)/python benchmarks/bench_tree.py
	$(BIN)/python benchmarks/bench_sampling.py
	$(BIN)/python benchmarks/bench_bon.py
	$(BIN)/python benchmarks/theorem4_convergence.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_scoring.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_search.py
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_lab.py

# The documentation site into site/ (open site/index.html): the notebooks executed first where their source
# changed (docs/execute_notebooks.py, cached in .cache/docs/), then a strict build (a warning fails it). Offline.
docs: $(STAMP)
	$(BIN)/python docs/execute_notebooks.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site
