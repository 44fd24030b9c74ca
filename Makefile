# The two commands of the README's quick start, and the chores around them.
#   make demo   the whole pipeline on built-in synthetic data
#   make test   the test suite
# Both create a virtual environment in .venv from nothing on first use, with the versions
# pinned in constraints.txt.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
# The CPU build of torch (a test-only dependency) ships as a local wheel on these machines.
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)

.PHONY: demo test install bench lock clean

demo: $(STAMP)
	$(BIN)/damwatch demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "damwatch needs Python >= 3.11; run: make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIP_FLAGS) -c constraints.txt -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

# Every benchmark, one after the other (each prints a table and a JSON line).
bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# Re-pin constraints.txt from a fresh resolution of pyproject.toml.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet $(PIP_FLAGS) -e ".[test]"
	{ sed -n '1,3p' constraints.txt; .venv-lock/bin/pip freeze --exclude-editable | grep -vi '^damwatch' | sort -f; } > constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-lock

clean:
	rm -rf $(VENV) damwatch-data .pytest_cache
