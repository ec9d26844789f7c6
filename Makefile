# One source of truth for install, run, test. CI calls `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-cluster lint types unit integration e2e chaos bench clean browser

SRC := $(wildcard worker world_redis tests bench examples)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: run the example workflow end to end on the embedded Redis; print its result and event log
run: $(STAMP)
	$(BIN)/wf demo examples.order

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/pytest -q tests/integration

e2e: $(STAMP) browser
	$(BIN)/pytest -q tests/e2e

## browser: Debian's Chromium for the dashboard's browser tests (Playwright drives it; nothing
## is downloaded), installed when missing
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

## test: lint, types, then every test tier but chaos
test: lint types browser
	$(BIN)/pytest -q -p no:cacheprovider tests/unit tests/integration tests/e2e

## test-cluster: the whole e2e tier on a local 3-master Redis Cluster (started by the tests)
test-cluster: $(STAMP) browser
	WF_TEST_TOPOLOGY=cluster $(BIN)/pytest -q -p no:cacheprovider tests/e2e

chaos: $(STAMP)
	$(BIN)/pytest -q -s -m chaos tests/chaos

$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	touch $@

## bench: ours vs the peers, one run (ARGS="--only 1,4 --no-peers" for a subset); see bench/run.py
bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run $(ARGS)

clean:
	rm -rf $(VENV) .workflow .mypy_cache .ruff_cache .pytest_cache
