# The commands people type. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
RUN := $(UV) run --frozen
# `make demo` talks to the service `make run` started, on the same port (or URL=...).
URL ?= http://127.0.0.1:$(or $(LEDGERLINK_PORT),8000)

.PHONY: help run test test-faults lint typecheck migrations-check deploy-check openapi openapi-check openapi-lint bench bench-quick demo exporter install clean console-screenshots

help: ## List the commands
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet --disable-pip-version-check uv

install: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv) ## Install everything (uv, Python deps) into .venv
	$(UV) sync --frozen

run: install ## Start the service on an embedded PostgreSQL at http://127.0.0.1:8000
	$(RUN) ledgerlink serve --dev

test: install lint typecheck migrations-check openapi-check ## Lint, type-check, migrations, then the test suite
	$(RUN) pytest

test-faults: install ## The slow fault-injection tests (database restarts, kills, outages)
	$(RUN) pytest -m faults -o addopts=''

lint: install ## ruff format --check and ruff check
	$(RUN) ruff format --check .
	$(RUN) ruff check .

typecheck: install ## mypy --strict
	$(RUN) mypy

deploy-check: install ## hadolint on the Dockerfile, Kubernetes schema validation of deploy/k8s
	$(RUN) pytest tests/deploy -q

migrations-check: install ## alembic check and a downgrade/upgrade round trip on a scratch database
	$(RUN) python -m tests.support.migrations_check

openapi: install ## Write openapi.yaml from the app
	$(RUN) python -m service.openapi write

openapi-check: install ## Fail when openapi.yaml differs from the app
	$(RUN) python -m service.openapi check

REDOCLY_CLI := @redocly/cli@2.77.0
openapi-lint: ## Redocly's recommended lint of openapi.yaml (needs Node; fetches the pinned CLI once)
	npx --yes $(REDOCLY_CLI) lint --extends recommended --format stylish openapi.yaml

bench: install ## The full benchmark suite (~20 min); writes docs/BENCHMARKS.md, benchmarks.json and benchmarks.png
	$(RUN) python -m bench

bench-quick: install ## A reduced benchmark run (under 2 minutes)
	$(RUN) python -m bench --quick

console-screenshots: install ## Run the console's browser tests and keep their screenshots in docs/console/
	LEDGERLINK_CONSOLE_SCREENSHOTS=1 $(RUN) pytest tests/console/test_browser.py -q

demo: install ## Push a generated Sage company to the running service (after make run; URL=...)
	$(RUN) ledgerlink-exporter demo --url $(URL)

exporter: install ## Build the Sage-side exporter's wheel and single-file zipapp into dist/
	$(RUN) python exporter/build.py --uv $(UV) dist

clean: ## Remove the virtualenv, tool cache and local data
	rm -rf .venv .tools .data .pytest_cache .mypy_cache .ruff_cache dist
