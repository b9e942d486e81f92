# One entry point for running and testing the service. Everything installs into .venv from the pinned requirements.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MANAGE := cd backend && ../$(BIN)/python manage.py
# Debian packages the targets below install when missing. apt waits for dpkg's lock rather than failing at once when
# another install holds it (a second checkout's run, or make test-compose's engine): apt.conf(5), in seconds.
APT := apt-get -o DPkg::Lock::Timeout=300
# The support targets below run manage.py on the settings of .env and the environment (the native stack's
# database); with QUICK_RUN=1, on the quick run's instead (bin/quick-run: SQLite, whatever .env says).
DJANGO = $(if $(QUICK_RUN),bin/quick-run manage,$(BIN)/python backend/manage.py)

.PHONY: run test test-fast test-compose bench up down install install-test migrate nginx chromium wrk clean \
	manage createsuperuser user-create address-status promtool jq

# Quick local run: embedded SQLite, in-process jobs, codes printed on this console, whatever .env holds (of it,
# only API_PORT is read). See bin/quick-run.
run: $(VENV)/.runtime-installed
	@bin/quick-run

# The test suite runs against the local PostgreSQL (127.0.0.1) and a redis-server of its own, with real Celery
# workers, the native stack behind nginx, and Debian's Chromium for the browser test.
test: $(VENV)/.test-installed nginx chromium
	$(BIN)/pytest

# The unit and API tests only (pytest.ini's markers): no worker processes, nginx or Chromium, nothing as root.
test-fast: $(VENV)/.test-installed
	$(BIN)/pytest -m "not e2e and not faults and not browser and not slow"

# The compose stack's end-to-end tests (tests/e2e/test_compose_stack.py) on a Docker engine: the one that answers,
# or, on a host declared disposable (OTP_DISPOSABLE_HOST=1, as .ci/run does), Debian's docker.io installed and
# started by tests/e2e/compose_engine.py on a data root under var/compose-engine/, with local stand-ins for the
# public images (tests/e2e/images/). Kept out of `make test`: it installs an engine as root and changes the
# firewall while it runs (restored afterwards).
test-compose: $(VENV)/.test-installed
	$(BIN)/python tests/e2e/compose_engine.py $(BIN)/pytest tests/e2e/test_compose_stack.py -p no:cacheprovider -v

# Benchmarks (not tests): starts the native stack on a database of its own, drives it with wrk through nginx beside
# a bare view and the real peer (drfpasswordless, bench/peer/), prints a table and writes bench/results/latest.json
# and latest.png. About 18 minutes; BENCH_ONLY_PEER=1 runs the comparison with the peer alone.
bench: $(VENV)/.bench-installed nginx wrk
	$(BIN)/python bench/run.py

# The full stack without Docker: migrations, gunicorn, a worker per queue, beat and nginx, from .env and the
# environment. Returns once /readyz answers 200 through nginx on HTTP_PORT. Logs: var/stack/log/.
up: $(VENV)/.runtime-installed nginx
	@bin/stack up

# Stops exactly what `make up` started from this checkout.
down:
	@bin/stack down

# Support commands, as written in the README. Variables reach the commands through the environment, so an
# address with spaces or quotes needs no escaping beyond the shell's own.
manage: $(VENV)/.runtime-installed
	@$(DJANGO) $(ARGS)

createsuperuser: $(VENV)/.runtime-installed
	@$(DJANGO) createsuperuser $(ARGS)

# Only values given on make's command line count: many shells export EMAIL for other tools.
given = $(filter command line,$(origin $(1)))
user-create: $(VENV)/.runtime-installed
	@$(if $(call given,EMAIL)$(call given,MOBILE),:,echo 'usage: make user-create EMAIL=alice@example.com (or MOBILE=+14155552671, or both)' >&2; exit 2)
	@$(DJANGO) user_create $(if $(call given,EMAIL),--email "$$EMAIL") $(if $(call given,MOBILE),--mobile "$$MOBILE") $(ARGS)

address-status: $(VENV)/.runtime-installed
	@$(if $(call given,ADDRESS),:,echo 'usage: make address-status ADDRESS=alice@example.com (or a mobile number)' >&2; exit 2)
	@$(DJANGO) address_status "$$ADDRESS"

# Debian's nginx, installed when missing; its service is kept from starting (we run our own, in the foreground).
nginx:
	@command -v nginx >/dev/null 2>&1 || command -v /usr/sbin/nginx >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "nginx is missing: install Debian's nginx package (as root)"; exit 1; fi; \
	  $(APT) update -qq && \
	  if [ -e /usr/sbin/policy-rc.d ]; then keep=1; else keep=0; printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi; \
	  DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq --no-install-recommends nginx; rc=$$?; \
	  [ "$$keep" = 1 ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; }

# Debian's Chromium for the browser test (Playwright drives it; it downloads no browser of its own).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "chromium is missing: install Debian's chromium package (as root)"; exit 1; fi; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq --no-install-recommends chromium; }

# axe-core, which the browser test runs on every state of /home/, from the npm registry at the version
# tests/e2e/axe/package-lock.json pins (with its hash), into var/axe/ (git-ignored). npm comes with Node.js.
AXE_JS := var/axe/node_modules/axe-core/axe.min.js
.PHONY: axe
axe: $(AXE_JS)
$(AXE_JS): tests/e2e/axe/package.json tests/e2e/axe/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "npm is missing: install Debian's npm package (as root)"; exit 1; fi; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq --no-install-recommends npm; }
	@mkdir -p var/axe && cp tests/e2e/axe/package.json tests/e2e/axe/package-lock.json var/axe/
	@cd var/axe && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	@touch $@
test: axe

# promtool, from Debian's prometheus package (its service is kept from starting), for the tests of ops/prometheus/
# and of the dashboard's queries. `make test` needs it: listed here so the test target's line stays as it is.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "promtool is missing: install Debian's prometheus package (as root)"; exit 1; fi; \
	  $(APT) update -qq && \
	  if [ -e /usr/sbin/policy-rc.d ]; then keep=1; else keep=0; printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi; \
	  DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq --no-install-recommends prometheus; rc=$$?; \
	  [ "$$keep" = 1 ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; }
test: promtool

# jq, which the curl example (docs/examples/curl-signin.sh) and the README's log commands use; `make test` runs
# them. Listed apart so the test target's line stays as it is.
jq:
	@command -v jq >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "jq is missing: install Debian's jq package (as root)"; exit 1; fi; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq --no-install-recommends jq; }
test: jq

wrk:
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "wrk is missing: install Debian's wrk package (as root)"; exit 1; fi; \
	  $(APT) update -qq && DEBIAN_FRONTEND=noninteractive $(APT) install -y -qq --no-install-recommends wrk; }

install: $(VENV)/.runtime-installed
install-test: $(VENV)/.test-installed

migrate: $(VENV)/.runtime-installed
	$(MANAGE) migrate --noinput

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: requirements.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.bench-installed: requirements.txt requirements-test.txt requirements-bench.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements-bench.txt
	touch $@ $(VENV)/.test-installed $(VENV)/.runtime-installed

$(VENV)/.test-installed: requirements.txt requirements-test.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@ $(VENV)/.runtime-installed

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis backend/db.sqlite3 backend/db.sqlite3-wal backend/db.sqlite3-shm
