# circuitbase bootstrap: a cached virtual environment keyed on the lock file, then the project in it.
#   make demo    set everything up and run the main job on the embedded defaults
#   make test    set everything up and run the test suite against a real Neo4j + GDS
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
CACHE ?= $(or $(CIRCUITBASE_HOME),$(HOME)/.cache/circuitbase)
LOCK_KEY := $(shell cat requirements.lock | sha256sum | cut -c1-12)-$(shell $(PYTHON) -c 'import sys; print("py%d%d" % sys.version_info[:2])')
VENV := $(CACHE)/venv-$(LOCK_KEY)
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench lock clean-venvs print-bin

$(VENV)/.complete: requirements.lock
	@echo "creating $(VENV) (cached; rebuilt only when requirements.lock changes)"
	rm -rf "$(VENV)"
	$(PYTHON) -m venv "$(VENV)"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	touch "$@"

setup: $(VENV)/.complete
	@$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v -e '^\s*$$' -e 'wheel_obj' -e '!!' -e '\*\*\*' || true
	@$(BIN)/circuitbase --help > /dev/null

demo: setup
	$(BIN)/circuitbase demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/attribution.py

# Refresh requirements.lock from a fresh resolve of pyproject.toml's ranges.
lock:
	rm -rf "$(CACHE)/venv-lock"
	$(PYTHON) -m venv "$(CACHE)/venv-lock"
	$(CACHE)/venv-lock/bin/python -m pip install -q --upgrade pip
	$(CACHE)/venv-lock/bin/python -m pip install -q ".[dev,fast]"
	$(CACHE)/venv-lock/bin/python -m pip freeze --all --exclude circuitbase --exclude pip > requirements.lock

clean-venvs:
	rm -rf "$(CACHE)"/venv-*

print-bin:
	@echo $(BIN)
