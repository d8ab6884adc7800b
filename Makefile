# Two commands on a fresh machine: `make run` (the service) and `make test` (the suite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The fast layer: every test not marked live, without the plugins only the fuzz tests use
# (seconds of imports).
FAST := -m "not live" -p no:schemathesis -p no:hypothesispytest -p no:anyio

.PHONY: install run test test-fast lint format clean-data bench

$(STAMP): requirements.txt requirements-dev.txt scripts/install_system_packages.sh
	scripts/install_system_packages.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

## Run redis, the Celery worker and gunicorn under supervisord; prints an API key and curl.
run: install
	$(PY) -m model stack --print-key

## Lint, then the whole suite: the fast layer first (fails fast), then the tests marked live,
## against the stacks they start themselves (testkit/live.py).
test: install lint
	$(PY) -m pytest -v $(FAST)
	$(PY) -m pytest -v -m live

## The fast layer only: every test that starts no stack (a bare redis-server at most), spread
## over 4 processes (FAST_JOBS=0: in this process alone). Its cost: docs/design.md, "The fast
## layer's cost". 4 and not one per core: a dozen tests wait on purpose (host slots, retries),
## and 4 overlap those waits: 46 s against 65 s with 2 on the idle 2-core VM.
FAST_JOBS ?= 4
test-fast: install
	$(PY) -m pytest -q $(FAST) -n $(FAST_JOBS)

# Every Python tree of the project.
LINT_PATHS := model client synthetic server scripts bench testkit

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: install
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

## Benchmarks (bench/README.md): service vs raw (inference only, end to end) vs seed-style,
## API overhead and its profile, cancel, memory. BENCH_N=20 for fewer pages;
## BENCH_FLAGS=--quick for a smoke run, --gpu on CUDA.
bench: install
	$(PY) -m bench $(BENCH_FLAGS)
