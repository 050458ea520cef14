# The two commands a newcomer needs are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-deps lint bench soak clean

$(BIN)/xenhad: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/xenhad

demo: setup
	$(BIN)/xenhad demo

# The real BMC emulators and fence agents the fencing tests drive (see shared TEST-COMPONENTS).
test-deps: setup
	bash scripts/install-test-deps

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

test: test-deps lint
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
