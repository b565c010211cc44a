# The README's two commands: `make demo` (the main job) and `make test`. Both create .venv on first use.
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/nnunet-dale: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test,dev]"
	touch $@

.PHONY: demo test test-fast lint
demo: $(BIN)/nnunet-dale
	$(BIN)/nnunet-dale demo $(DEMO_ARGS)

lint: $(BIN)/nnunet-dale
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest

test-fast: lint
	$(BIN)/pytest -m "not slow"
