# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test test-distributed lint bench up clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/clm demo

# The distributed scenarios (tests/distributed: hosts in network namespaces, root only)
# run in their own target, so `make test` does not run them a second time.
test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest -q -m "not distributed"

# Hosts built from network namespaces (root): PostgreSQL + Redis + S3, api + beat, two
# worker hosts; partitions, SIGSTOP, broker loss, rolling restart (CLM_DIST_JOBS jobs).
test-distributed: venv
	$(BIN)/pytest -q -m distributed tests/distributed

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python bench/run_all.py

# The whole system on one machine (web, workers, beat, events, flower) via the Procfile.
up: venv
	$(BIN)/clm db upgrade
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/honcho start -p $${CLM_WEB_PORT:-8000}

clean:
	rm -rf var
