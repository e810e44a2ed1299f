# fastslow: `make demo` runs the tiny end-to-end pipeline on the CPU, `make test` runs the test suite.
# Both create .venv and install the project into it when needed; only Python is required beforehand.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fastslow-installed

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $(STAMP)

# The tiny pipeline (recipes/configs/tiny/pipeline.yaml) into outputs/demo; a rerun resumes where it stopped.
demo: $(STAMP)
	$(BIN)/python recipes/pipeline.py --config recipes/configs/tiny/pipeline.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# lint-imports checks the layer contracts in pyproject.toml; `make test` runs it too (tests/test_architecture.py).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python scripts/bench/sft_learning.py
	$(BIN)/python scripts/bench/reward_speed.py
	$(BIN)/python scripts/bench/merge.py
	$(BIN)/python scripts/bench/distill.py
	$(BIN)/python scripts/bench/dual_system.py

clean:
	rm -rf outputs .pytest_cache
