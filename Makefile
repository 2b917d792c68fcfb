# Two entry points for a fresh machine: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED_DATA ?= ../shared/data

.PHONY: setup demo test lint bench-smoke clean

$(BIN)/smcluster: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(BIN)/smcluster

demo: setup
	rm -rf runs/demo
	$(BIN)/smcluster fit --preset demo --data digits --clusters 10 --out runs/demo

test: setup
	sh scripts/ensure-browser.sh
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-smoke: setup
	$(BIN)/python benchmarks/quality.py --suite smoke

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
