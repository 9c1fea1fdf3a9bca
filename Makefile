# The two commands of the README: `make demo` and `make test`. Both create the virtual
# environment and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/interstate up examples/election-night

test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) .interstate

bench: $(STAMP)
	$(BIN)/python bench/bench_ca.py
	$(BIN)/python bench/bench_fastfail.py
	$(BIN)/python bench/bench_boundary.py
	$(BIN)/python bench/bench_push.py
