# casebridge: the two commands a district IT lead needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PACKAGES := service connectors mappings jobs tools

.PHONY: install demo test lint postgres check-entrypoints bench clean

$(BIN)/casebridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/casebridge

## Run the whole pipeline on the bundled sample district (SQLite, local file sinks).
demo: install
	$(BIN)/casebridge --config config/district.yaml demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Start PostgreSQL when it is installed here but not running (tests skip it otherwise, CI fails).
postgres:
	@bash scripts/ensure-postgres.sh

## Lint, type-check, then the suite on SQLite and PostgreSQL.
test: install lint postgres
	$(BIN)/pytest -n 2 -q

## The image's entry commands from a clean virtualenv (wheel, no dev extra): several minutes on
## 2 busy cores, so CI runs it after `make test` instead of inside it.
check-entrypoints: postgres
	bash scripts/check-entrypoints.sh

bench: install postgres
	$(BIN)/python bench/bench_import.py
	$(BIN)/python bench/bench_edfi.py

clean:
	rm -rf $(VENV) var out .pytest_cache .mypy_cache .ruff_cache
