# Privacy Ledger. `make demo` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on this disk; without it pip would fetch a multi-GB CUDA build.
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := $(if $(WHEELS),--find-links $(WHEELS),)
STAMP := $(VENV)/.installed
ADDR ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv demo run test test-unit bench lint migrate clean-var

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(PIP_FLAGS) -r requirements-dev.txt
	touch $(STAMP)

venv: $(STAMP)

migrate: $(STAMP)
	DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --noinput

demo: $(STAMP)
	@DEBUG=$${DEBUG:-1} $(BIN)/python manage.py migrate --noinput -v 0
	@DEBUG=$${DEBUG:-1} $(BIN)/python manage.py demo $(DEMO_ARGS)

# The admin and the API with a real Celery worker beside them (no server to install);
# `make run PORT=8001` or `ADDR=0.0.0.0` to listen elsewhere. See scripts/run-local.sh.
run: $(STAMP)
	ADDR=$(ADDR) PORT=$(PORT) bash scripts/run-local.sh

# The whole suite. With DATABASE_URL and CELERY_BROKER_URL set it runs on PostgreSQL with a
# real Celery worker; without them on SQLite with tasks run in-process.
test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run

clean-var:
	rm -rf var/
