# circuitbase bootstrap: a cached virtual environment keyed on the lock file, then the project in it.
#   make demo    set everything up and run the main job on the embedded defaults
#   make test    set everything up and run the test suite against a real Neo4j + GDS
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
CACHE ?= $(or $(CIRCUITBASE_HOME),$(HOME)/.cache/circuitbase)
LOCK_KEY := $(shell cat requirements.lock | sha256sum | cut -c1-12)-$(shell $(PYTHON) -c 'import sys; print("py%d%d" % sys.version_info[:2])')
VENV := $(CACHE)/venv-$(LOCK_KEY)
BIN := $(VENV)/bin

.PHONY: system-deps browser-deps setup demo test lint bench lock clean-venvs print-bin

# No prerequisite on requirements.lock's mtime: the folder name already carries the lock's hash, and a
# fresh clone's files are all newer than any cached venv.
$(VENV)/.complete:
	@echo "creating $(VENV) (cached; rebuilt only when requirements.lock changes)"
	rm -rf "$(VENV)"
	$(PYTHON) -m venv "$(VENV)"
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	touch "$@"

# System tools: Java 17+ and Maven (Neo4j from Maven Central), Chromium (dashboard tests only).
# Installed with apt-get when missing and we are root on Debian/Ubuntu; otherwise named and stopped.
define need
	@missing=""; for pair in $(1); do tool=$${pair%%:*}; pkg=$${pair#*:}; \
		command -v $$tool >/dev/null || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing:$$missing"; apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "please install:$$missing (e.g. sudo apt-get install$$missing)"; exit 1; fi; \
	fi
endef

system-deps:
	$(call need,java:openjdk-17-jre-headless mvn:maven)

browser-deps:
	$(call need,$(if $(CIRCUITBASE_CHROMIUM),,chromium:chromium))

setup: $(VENV)/.complete
	@$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v -e '^\s*$$' -e 'wheel_obj' -e '!!' -e '\*\*\*' || true
	@$(BIN)/circuitbase --help > /dev/null

demo: system-deps setup
	$(BIN)/circuitbase demo

test: system-deps browser-deps setup
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
	$(CACHE)/venv-lock/bin/python -m pip install -q ".[dev,fast,ray]"
	$(CACHE)/venv-lock/bin/python -m pip freeze --all --exclude circuitbase --exclude pip > requirements.lock

clean-venvs:
	rm -rf "$(CACHE)"/venv-*

print-bin:
	@echo $(BIN)
