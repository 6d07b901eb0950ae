# Two commands do all the set-up on a fresh machine:
#   make run    start pushrec: worker + scheduler (embedded Redis, nothing to install)
#   make test   run the test suite (starts its own redis-server when none answers)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint check bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/pushrec run

test: install
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check worker indexing push tests bench
	$(BIN)/ruff format --check worker indexing push tests bench
	$(BIN)/mypy --strict worker indexing push

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
