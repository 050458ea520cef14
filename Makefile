# The two commands a newcomer needs are `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-deps lint bench soak clean bundle bundle-deps

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

test: test-deps lint bundle
	$(BIN)/pytest -q

# dist/xenhad-VERSION-x86_64.tar.gz and dist/xenhad-VERSION-1.x86_64.rpm for dom0s (see
# docs/DEPLOYMENT.md). Downloads are cached in build/bundle-cache; remade only when an input
# changed.
BUNDLE_VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/xenhad/__init__.py)
BUNDLE_INPUTS := $(shell find src/xenhad packaging etc docs README.md -type f -not -name '*.pyc' 2>/dev/null)
BUNDLE := dist/xenhad-$(BUNDLE_VERSION)-x86_64.tar.gz dist/xenhad-$(BUNDLE_VERSION)-1.x86_64.rpm

bundle-deps:
	bash scripts/install-bundle-deps

$(BUNDLE) &: $(BUNDLE_INPUTS) | setup
	bash scripts/install-bundle-deps
	$(BIN)/python packaging/bundle/build.py

bundle: $(BUNDLE)

bench: setup
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build/bundle dist
