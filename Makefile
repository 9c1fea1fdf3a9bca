# The two commands of the README: `make demo` and `make test`. Both create the virtual
# environment and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench install tools test-tools kube-tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages, installed once when missing (as root, or with sudo): `hey` generates the
# rehearsal's load (demo and tests); `chromium` and `chromium-driver` are the headless browser of
# tests/test_e2e_dashboard.py (tests only); `redis-server` (with redis-cli) is the plain TCP
# service of tests/test_e2e_protocols.py. `apt_install` takes: a check command, then packages.
apt_install = { $(1); } >/dev/null 2>&1 || { \
		echo "installing $(2) with apt-get"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(2) >/dev/null 2>&1; }

tools:
	@$(call apt_install,command -v hey,hey)

test-tools: tools
	@$(call apt_install,command -v chromium && command -v chromedriver,chromium chromium-driver)
	@$(call apt_install,command -v redis-server && command -v redis-cli,redis-server)

# etcd, kube-apiserver and kube-controller-manager of tests/test_kube_real_cluster.py, built from
# the Go modules of tests/kube/tools (once; reused while go.sum stays the same).
kube-tools:
	bash tests/kube/tools/build.sh

demo: $(STAMP) tools
	$(BIN)/interstate up examples/election-night

test: $(STAMP) test-tools kube-tools lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench
	$(BIN)/ruff format --check src tests examples bench
	$(BIN)/mypy src
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) .interstate

bench: $(STAMP)
	@$(call apt_install,command -v wrk && { command -v nginx || test -x /usr/sbin/nginx; },wrk nginx-light)
	$(BIN)/python bench/bench_ca.py
	$(BIN)/python bench/bench_fastfail.py
	$(BIN)/python bench/bench_boundary.py
	$(BIN)/python bench/bench_push.py
	$(BIN)/python bench/bench_hops.py
