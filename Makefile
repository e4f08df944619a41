# thaw — two commands on a fresh machine: `make demo` and `make test`.
# Everything heavy (CRIU, Kubernetes binaries) is cached by version under $(THAW_CACHE)
# so a second run on the same machine reuses it.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export THAW_CACHE ?= $(HOME)/.cache/thaw

.PHONY: install test unit e2e e2e-node demo lint bench clean

install: $(VENV)/.installed
	@scripts/install-criu.sh $(VENV)
	@$(BIN)/python -m thaw.engine_model >/dev/null  # the demo's model, converted once (cached)

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,engine]'
	@touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

unit: install
	$(BIN)/python -m pytest -q -m 'not gpu and not apiserver and not node' tests

e2e: install
	scripts/build-kube.sh
	THAW_REQUIRE_E2E=1 $(BIN)/python -m pytest -q -m apiserver tests

e2e-node: install
	scripts/build-kube.sh
	scripts/node/install.sh >/dev/null
	THAW_REQUIRE_NODE=1 $(BIN)/python -m pytest -q -m node tests

test: lint unit e2e e2e-node

demo: install
	$(BIN)/thaw demo

bench: install
	$(BIN)/python bench/webhook_latency.py
	$(BIN)/python bench/webhook_load.py
	$(BIN)/python bench/webhook_hostile.py
	$(BIN)/python bench/agent_restore.py
	$(BIN)/python bench/read_list.py --cold

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
