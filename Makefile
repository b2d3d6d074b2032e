# Ferry: one entry point for developers and CI.
#   make up     create .venv, install, start the whole local stack (Kafka x2, PostgreSQL, Redis, API, worker, beat)
#   make test   start what the tests need (if not running) and run the test suite
#   make down   stop everything `make up` started
#   make lint   ruff, mypy, alembic check (models and migrations agree; starts PostgreSQL if needed) and helm-lint
#   make helm-lint  the Helm chart (deploy/helm/ferry): helm lint --strict and helm template with each ci/ value set
#               (the first time, builds the pinned Helm with Go into .cache/bin: 3-4 minutes, 1.2 GB of .cache)
#   make bench  Ferry against MirrorMaker 2 and the brokers' own limit (results in bench/results/)
#   make chaos  the reliability suite: every fault scenario on a lab of its own, the auditor deciding
#               (chaos/results/, docs/reliability.md)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: up down status test lint helm-lint bench chaos openapi clean

$(STAMP): pyproject.toml setup.py workers/engine/_splice.c
	@# A venv left half-made by an earlier failure (no pip in it) is made again.
	@test -x $(VENV)/bin/pip || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

up: $(STAMP)
	$(PY) -m dev.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m dev.stack down; else echo "nothing to stop (no .venv)"; fi

status: $(STAMP)
	$(PY) -m dev.stack status

test: $(STAMP)
	$(PY) -m dev.stack up --infra
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m dev.stack up --infra
	$(PY) -m bench.run $(BENCH_ARGS)

chaos: $(STAMP)
	$(PY) -m chaos.run $(CHAOS_ARGS)

openapi: $(STAMP)
	$(PY) -m api.openapi_dump
	$(PY) -m dev.api_reference

lint: $(STAMP)
	$(PY) -m ruff check api cli workers models migrations dev tests bench chaos setup.py
	$(PY) -m ruff format --check api cli workers models migrations dev tests bench chaos docs setup.py
	$(PY) -m mypy
	$(PY) -m dev.stack schema-check
	$(PY) -m dev.helm lint

helm-lint: $(STAMP)
	$(PY) -m dev.helm lint

clean: down
	rm -rf $(VENV) .run .cache
