# The two set-up commands of the README: `make serve` and `make test` (every test).
# `make test-fast`: the unit tier without whole compress jobs (engine), services, browser or the
# real model: the inner loop while editing.
# Both create .venv on first use (torch first: the pinned CPU wheel, see README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-fast lint install

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/spruce serve $(ARGS)

# .ci/deps.sh: PostgreSQL, Redis, Chromium and Node.js, started or installed where missing.
test: $(STAMP)
	bash .ci/deps.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# No services needed: the unit tier without the engine, integration, e2e and model tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q -m "not engine and not integration and not e2e and not model" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
