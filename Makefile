# The two commands of the README: `make demo` and `make test`. Both create the virtual
# environment and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# `hey` (Debian's package) generates the rehearsal's load; installed once, as root or with sudo.
# Likewise `chromium` and `chromium-driver`: the headless browser of tests/test_e2e_dashboard.py.
tools:
	@command -v hey >/dev/null 2>&1 || { \
		echo "installing hey (HTTP load generator) with apt-get"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq hey >/dev/null 2>&1; }
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
		echo "installing chromium and chromium-driver (the dashboard test's headless browser) with apt-get"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; }

demo: $(STAMP) tools
	$(BIN)/interstate up examples/election-night

test: $(STAMP) tools lint
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
