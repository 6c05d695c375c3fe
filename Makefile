# Every target sets up what it needs: a virtual environment with the project and its
# tools, and the system packages the tests use (installed with apt when missing).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_STAMP := $(VENV)/.apt

.PHONY: run state checks test lint bench venv sysdeps clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@scripts/bootstrap-venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# System packages for the tests (openssl for TLS tests; redis-server for the Redis
# paths). Installed only when missing, with apt, as root or through sudo.
sysdeps: $(APT_STAMP)

$(APT_STAMP): scripts/ensure-system-packages | $(STAMP)
	@scripts/ensure-system-packages
	@touch $(APT_STAMP)

run: $(STAMP)
	$(BIN)/python scripts/demo.py

# Two admin commands against the `make run` dispatcher, from another terminal (the
# others: $(BIN)/clusterchecks-dispatcher --help). CLUSTERCHECKS_URL points them elsewhere.
state checks: $(STAMP)
	$(BIN)/clusterchecks-dispatcher $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# Two workers (pytest-xdist), each taking whole test files (--dist loadfile: a module's
# cluster fixture stays in one process): the end-to-end tests mostly wait on processes
# they started, so two run in about 60 % of the time of one. Each worker picks ports from
# its own slice (tests/processes.py).
test: lint sysdeps
	$(BIN)/pytest -q -p no:cacheprovider --durations=15 -n 2 --dist loadfile

bench: $(STAMP) sysdeps
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
