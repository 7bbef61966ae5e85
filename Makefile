# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint bench up clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/clm demo

test: venv
	$(BIN)/ruff check .
	$(BIN)/pytest -q

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
