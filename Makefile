# sibifang — two commands do all the set-up: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
SCALE ?= county
SEED ?= 7
DAYS ?= 5
PG_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install demo demo-postgres test test-fast bench lint clean

install: $(STAMP)

# The environment comes from the lock file only; uv installs it in seconds, pip is the fallback.
$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.11 is required"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check "uv==0.13.9" 2>/dev/null || true
	@if test -x $(BIN)/uv; then \
	  $(BIN)/uv pip install -q --python $(BIN)/python -r requirements.lock && \
	  $(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e . ; \
	else \
	  $(BIN)/python -m pip install -q -r requirements.lock && \
	  $(BIN)/python -m pip install -q --no-deps -e . ; \
	fi
	@rm -f $(VENV)/.installed-*; touch $@
	@echo "environment ready: $(BIN)/sibifang"

demo: install
	$(BIN)/sibifang demo --scale $(SCALE) --seed $(SEED) --days $(DAYS) --out out

demo-postgres: install
	SIBIFANG_DATABASE_URL=$(PG_URL) $(BIN)/sibifang demo --scale $(SCALE) --seed $(SEED) --days $(DAYS) --out out-pg --reset

test: install
	SIBIFANG_TEST_POSTGRES_URL=$${SIBIFANG_TEST_POSTGRES_URL:-$(PG_URL)} $(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -x -m "not slow"

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf out out-pg data .pytest_cache
