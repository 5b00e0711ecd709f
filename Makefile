# The two commands: `make up` (the whole platform) and `make test` (the whole suite).
# Needs only Python 3.11+ and make: uv is bootstrapped into .tools/ when it is not installed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DEV_MODE ?= 1
# When `make` was typed: `make up` prints its first-run times (first stored event, first dbt build) from here.
STARTED_AT := $(shell date +%s.%N)

.PHONY: install up test test-fast lint format bench bench-buffered bench-mqtt bench-growth dbt-docs clean-data

install: $(VENV)/.synced

# uv is bootstrapped only when the venv must be (re)created: with the venv in place, `make up` starts
# at once. In a virtual environment of its own: a system Python may refuse a global pip install (PEP 668).
$(VENV)/.synced: pyproject.toml uv.lock
	@test -x "$(UV)" || { $(PYTHON) -m venv .tools && .tools/bin/pip install --quiet uv; }
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

up: install
	UP_STARTED_AT=$(STARTED_AT) $(BIN)/iot-platform up

# Two workers, a test file each at a time (module fixtures build their database once, tests of a
# file keep their order).
test: install
	$(BIN)/pytest -n 2 --dist loadfile

test-fast: install
	$(BIN)/pytest -n 2 --dist loadfile -m "not slow"

# ruff, mypy over the app packages ([tool.mypy]), sqlfluff over the dbt project (dbt_project/.sqlfluff),
# .pre-commit-config.yaml runs the same (tests/test_env_example.py keeps .env.example true).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/sqlfluff lint dbt_project

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# wrk (Debian's package) is the load client for single events; installed here when missing.
# Options through BENCH_ARGS, e.g. `make bench BENCH_ARGS="--history 10000000"` (batches of 1,000
# again with 10 M facts stored: docs/lifecycle.md) or BENCH_ARGS=--quick.
bench: install
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null 2>&1 || sudo apt-get install -y -qq wrk || true
	$(BIN)/python -m bench.ingest_bench $(BENCH_ARGS)

# Buffered mode (NATS JetStream): 202 throughput next to direct mode and the ceilings, and the
# writers' drain of a 1 M-event backlog. Starts its own nats-server (Debian's nats-server package).
bench-buffered: install
	@command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null 2>&1 || sudo apt-get install -y -qq wrk || true
	@command -v nats-server >/dev/null || apt-get install -y -qq nats-server >/dev/null 2>&1 || sudo apt-get install -y -qq nats-server || true
	$(BIN)/python -m bench.buffered_bench

# The MQTT door beside the broker's own ceiling (Debian's mosquitto and mosquitto-clients).
bench-mqtt: install
	@command -v mosquitto_pub >/dev/null || apt-get install -y -qq mosquitto mosquitto-clients >/dev/null 2>&1 || sudo apt-get install -y -qq mosquitto mosquitto-clients || true
	$(BIN)/python -m bench.mqtt_bench

# dbt and the hourly Dagster run at 1 M and 10 M facts (SIZES=100k,1M for a short run).
bench-growth: install
	$(BIN)/python -m bench.growth_bench $(if $(SIZES),--sizes $(SIZES))

dbt-docs: install
	$(BIN)/iot-platform dbt docs generate

clean-data:
	-$(BIN)/iot-platform db stop
	rm -rf .data
