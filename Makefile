# make run   - set up a virtualenv and start the service (SQLite + embedded WhatsApp simulator + SIP front door)
# make test  - set up and run the whole suite (lint, types, stale-stub check, tests)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test setup engine-deps system-deps node-deps proto check-proto lint typecheck unit bench bench-calls bench-engine clean

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e clients/python -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# deploy/dev.toml turns the SIP front door on at 127.0.0.1:5060 with a trunk for a PBX on this machine.
run: $(STAMP) engine-deps
	mkdir -p var
	$(VENV)/bin/wacall serve --config deploy/dev.toml $(ARGS)

proto: $(STAMP)
	$(PY) scripts/gen_protos.py
	$(PY) scripts/gen_sync_client.py

check-proto: $(STAMP)
	$(PY) scripts/gen_protos.py --check
	$(PY) scripts/gen_sync_client.py --check

# The Python client's hand-written modules (the stubs are generated).
CLIENT_SOURCES := clients/python/wacall_client/__init__.py $(wildcard clients/python/wacall_client/_[a-z]*.py)

lint: $(STAMP)
	$(VENV)/bin/ruff check server adapters tests bench scripts $(CLIENT_SOURCES)
	$(VENV)/bin/ruff format --check server adapters tests bench scripts $(CLIENT_SOURCES)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP) node-deps
	$(PY) -m pytest $(PYTEST_ARGS)

# The media engine is rtpengine, run in userspace: installed from Debian without its recommended packages (the
# kernel module's build tools) when running as root; otherwise the command to run is printed.
engine-deps:
	@if ! command -v rtpengine >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rtpengine-daemon; \
	  else \
	    echo "wacall's media engine is rtpengine: sudo apt-get install --no-install-recommends rtpengine-daemon"; exit 1; \
	  fi; \
	fi

# The browser test drives a real headless Chromium, and the SIP tests a real SIPp (Debian packages; installed here
# when running as root).
system-deps: engine-deps
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else \
	    echo "the test suite needs Chromium: sudo apt-get install chromium chromium-driver"; exit 1; \
	  fi; \
	fi
	@# PostgreSQL 15's binaries only: the tests start their own server (initdb on loopback), no cluster is created.
	@if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 \
	      && { pg_dropcluster --stop 15 main 2>/dev/null || true; }; \
	  else \
	    echo "the test suite needs PostgreSQL 15: sudo apt-get install postgresql-15"; exit 1; \
	  fi; \
	fi
	@if ! command -v sipp >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sip-tester; \
	  else \
	    echo "the test suite needs SIPp: sudo apt-get install sip-tester"; exit 1; \
	  fi; \
	fi
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; \
	  else \
	    echo "the test suite runs the Node client's test: sudo apt-get install nodejs npm"; exit 1; \
	  fi; \
	fi

# The Node client's dependencies, exactly as locked (its test runs in the suite: tests/test_node_client.py).
node-deps: clients/node/node_modules/.package-lock.json

clients/node/node_modules/.package-lock.json: clients/node/package-lock.json
	npm ci --prefix clients/node --no-audit --no-fund

test: system-deps node-deps check-proto lint typecheck unit

bench: $(STAMP)
	$(PY) bench/run.py

bench-calls: $(STAMP)
	$(PY) bench/calls.py

bench-engine: $(STAMP) engine-deps
	$(PY) bench/engine.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis clients/node/node_modules
