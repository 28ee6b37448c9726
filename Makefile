# The two commands a newcomer needs:
#   make run    run the operator (starts a local cluster, with a node, when no cluster is configured)
#   make test   run the whole test suite (installs what it needs, builds the control plane once)
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin

.PHONY: run test unit e2e lint audit venv tools system-deps node-deps node-images clean chart-crds helm-e2e bench

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml tools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' -e ./tools
	touch $@

# The pinned Kubernetes control plane, etcd, helm; the node's kubelet, kube-proxy, kube-scheduler; Vault.
tools:
	bash tools/build-tools.sh >/dev/null
	bash tools/build-node.sh >/dev/null
	bash tools/build-vault.sh >/dev/null

system-deps:
	bash tools/install-system-deps.sh

# Only the Debian packages of the local node (containerd, runc, CNI plugins, iptables, debootstrap): `make run`.
node-deps:
	bash tools/install-system-deps.sh node

run: venv node-deps tools
	$(BIN)/wso-dev

lint: venv
	$(BIN)/lint-imports

# Known vulnerabilities in the installed dependencies (PyPI's advisory data through pip-audit).
# --strict: a dependency that cannot be looked up fails the audit instead of being skipped silently.
# Not part of `make test`: it needs https://pypi.org/pypi/<name>/<version>/json (or api.osv.dev with
# AUDIT_SERVICE=osv), which the CI machines of this project cannot reach (see docs/operators/security.md).
AUDIT_SERVICE ?= pypi
audit: venv
	$(BIN)/pip-audit --strict --skip-editable --progress-spinner off --vulnerability-service $(AUDIT_SERVICE)

unit: venv
	$(BIN)/pytest tests/unit

# The node's images, built before pytest (when root: the node needs it) so a cold build (debootstrap, pip) is
# not inside a test's timeout.
node-images: venv tools
	@if [ "$$(id -u)" -eq 0 ]; then $(BIN)/python -m devcluster.images build all >/dev/null; \
	else echo "not root: no local node, not building its images" >&2; fi

e2e: venv system-deps tools node-images
	$(BIN)/pytest tests/e2e

test: venv system-deps tools lint node-images
	$(BIN)/pytest tests

# The Helm chart's CRD templates (templates/crds/, behind crds.enabled) and its README's values table are
# generated from crds/ and values.yaml (tests/unit/test_chart_crds_in_sync.py and test_chart_readme.py check it).
CHART := deploy/helm/workspace-secrets-operator
chart-crds:
	$(PYTHON) tools/chart_crds.py
	$(BIN)/python tools/chart_readme.py

# The chart's tests: lint, render, install, and the WorkspaceSecret e2e suite run by an operator that
# holds only the chart's ServiceAccount token (see tests/e2e/test_helm.py).
helm-e2e: venv tools
	$(BIN)/pytest tests/e2e/test_helm.py

# Benchmarks (docs/developers/benchmarks.md): `make bench` (1,000 objects), `make bench BENCH_ARGS="--mode long"` (10,000),
# BENCH_ARGS="--kubeconfig PATH" for another cluster. Not part of `make test`: benchmarks never fail CI on timing.
BENCH_ARGS ?=
bench: venv tools $(VENV)/.bench-installed
	$(BIN)/python -m bench $(BENCH_ARGS)
$(VENV)/.bench-installed: pyproject.toml
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache
