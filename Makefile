# One entry point for running and testing the service. Everything installs into .venv from the pinned requirements.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MANAGE := cd backend && ../$(BIN)/python manage.py

.PHONY: run test install install-test migrate clean

# Quick local run: embedded SQLite, in-process jobs, codes printed on this console.
run: export DEBUG ?= true
run: $(VENV)/.runtime-installed
	$(MANAGE) migrate --noinput
	$(MANAGE) runserver $${API_PORT:-8000}

# The test suite runs against the local PostgreSQL and Redis (127.0.0.1), with a real Celery worker.
test: $(VENV)/.test-installed
	$(BIN)/pytest

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

$(VENV)/.test-installed: requirements.txt requirements-test.txt | $(VENV)/bin/python
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@ $(VENV)/.runtime-installed

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis backend/db.sqlite3
