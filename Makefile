# The two commands a newcomer needs:
#   make run    run the operator (starts a local control plane when no cluster is configured)
#   make test   run the whole test suite (installs what it needs, builds the control plane once)
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin

.PHONY: run test unit e2e lint venv tools system-deps clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

tools:
	bash hack/build-tools.sh >/dev/null
	bash hack/build-vault.sh >/dev/null

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

clean:
	rm -rf $(VENV) .pytest_cache
