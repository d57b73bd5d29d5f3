# The two commands of the README: `make run` and `make test`. Everything they need is
# installed into .venv from pyproject.toml; nothing else on the machine is assumed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "skyloom needs Python 3.11+ (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,aws,gcp,azure]'
	@touch $@

# Starts the embedded engine if it is not running, launches examples/hello.yaml on the
# local infra, streams its output and prints the web UI link.
run: $(BIN)/.installed
	cd examples && ../$(BIN)/skyloom launch -y -c hello hello.yaml

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(BIN)/.installed
	$(BIN)/python bench/cli_and_launch.py

clean:
	rm -rf $(VENV)
