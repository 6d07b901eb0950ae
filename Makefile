# Three commands do all the set-up on a fresh machine:
#   make demo   see it work: the shipped sample replayed on real workers, an HTML report
#   make run    start pushrec: worker + scheduler (embedded Redis, nothing to install)
#   make test   run the test suite (starts its own redis-server when none answers)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo run test test-shifted lint check bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/pushrec demo $(if $(MINUTES),--minutes $(MINUTES))

run: install
	$(BIN)/pushrec run

# The suite in two parts (pytest-xdist): the unit and Redis tests spread over up to 4
# processes, then the tests that start real worker processes (marker `integration`) two
# at a time: they mostly wait on those processes and their timeouts (under half of 2
# cores busy), and more at once would crowd the workers they start.
PYTEST_PROCESSES := --numprocesses=auto --maxprocesses=4
test: install
	$(BIN)/pytest -q $(PYTEST_PROCESSES) -m "not integration"
	$(BIN)/pytest -q --numprocesses=2 -m integration

# The suite under a wall clock shifted by SHIFT, as on a machine whose date is set: no test
# may depend on today's date. datefudge (Debian) shifts the wall clock of every process the
# suite starts, redis-server included, and leaves the monotonic clock alone; libfaketime
# 0.9.10 hangs CPython's timed waits (it shifts the monotonic clock that sem_clockwait
# compares against the kernel's) and Debian's jemalloc redis-server.
# PYTEST_ARGS narrows it (CI: -m "not integration", the unit and Redis tests; the tests
# that start real workers use the wall clock throughout and would double CI's time).
SHIFT ?= +400 days
PYTEST_ARGS ?=
test-shifted: install
	datefudge "$$(date -u -d '$(SHIFT)' '+%F %T')" $(BIN)/pytest -q $(PYTEST_PROCESSES) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check worker indexing push tests bench
	$(BIN)/ruff format --check worker indexing push tests bench
	$(BIN)/mypy --strict worker indexing push

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
