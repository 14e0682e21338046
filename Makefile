# Keyturn: `make run` starts the embedded stack, `make test` runs the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-chpasswd bench-orchestrator bench-inflight bench-expiry clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/keyturn dev

test: $(STAMP)
	scripts/setup-test-deps
	$(BIN)/ruff check .
	$(BIN)/mypy .
	$(BIN)/pytest

bench: $(STAMP)
	scripts/setup-test-deps
	$(BIN)/python bench/rotate.py

bench-chpasswd: $(STAMP)
	scripts/setup-test-deps
	$(BIN)/python bench/rotate.py --template ssh/linux-chpasswd

bench-orchestrator: $(STAMP)
	$(BIN)/python bench/orchestrator.py

bench-inflight: $(STAMP)
	$(BIN)/python bench/inflight.py

bench-expiry: $(STAMP)
	$(BIN)/python bench/expiry.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
