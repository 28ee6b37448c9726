# The two commands a newcomer needs:
#   make run    run the operator (starts a local control plane when no cluster is configured)
#   make test   run the whole test suite (installs what it needs, builds the control plane once)
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin

.PHONY: run test unit e2e lint venv tools system-deps clean chart-crds helm-e2e

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

tools:
	bash hack/build-tools.sh >/dev/null

system-deps:
	bash hack/install-system-deps.sh

run: venv tools
	$(BIN)/workspace-secrets-operator dev

lint: venv
	$(BIN)/lint-imports

unit: venv
	$(BIN)/pytest tests/unit

e2e: venv system-deps tools
	$(BIN)/pytest tests/e2e

test: venv system-deps tools lint
	$(BIN)/pytest tests

# The Helm chart ships byte-for-byte copies of crds/ (tests/unit/test_chart_crds_in_sync.py checks it).
CHART := deploy/helm/workspace-secrets-operator
chart-crds:
	rm -f $(CHART)/crds/*
	cp crds/* $(CHART)/crds/

# The chart's tests: lint, render, install, and the WorkspaceSecret e2e suite run by an operator that
# holds only the chart's ServiceAccount token (see tests/e2e/test_helm.py).
helm-e2e: venv tools
	$(BIN)/pytest tests/e2e/test_helm.py

clean:
	rm -rf $(VENV) .pytest_cache
