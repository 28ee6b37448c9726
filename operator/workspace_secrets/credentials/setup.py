"""Build the configured dynamic-credential providers from the platform's YAML file.

    providers:
      - name: aws-dev                 # what WorkspaceSecrets write in spec.credentials[].provider
        type: aws-iam                 # a type from credentials/providers/registry.py
        credentialsSecret: aws-admin  # admin credentials: a Secret in the operator's namespace
        config: {region: eu-west-1}   # type-specific settings and policy bounds
        allow:                        # who may use it; without `allow`, nobody (deny by default)
          namespaces: ["team-*"]      # glob patterns; a WorkspaceSecret's namespace must match one (if given)
          users: ["alice", "ci-*"]    # glob patterns; its spec.user must match one (if given)
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import yaml

from workspace_secrets.credentials.ledger import AccessRule
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.http import Egress
from workspace_secrets.runtime.kube import Kube, core_path
from workspace_secrets.credentials.providers import registry

log = logging.getLogger(__name__)


async def load_providers(path: str | None, kube: Kube, operator_namespace: str, *,
                         egress: Egress | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """Returns (providers by name, reasons by name for those that could not be set up). `egress`: the proxies and
    CAs of the providers' HTTP clients (default: the environment's proxies, the system store)."""
    if not path:
        return {}, {}
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f) or {}
    providers: dict[str, Any] = {}
    broken: dict[str, str] = {}
    for item in document.get("providers", ()):
        name, type_name = item.get("name"), item.get("type")
        try:
            access = AccessRule.parse(item.get("allow"))
            admin: dict[str, Sensitive] = {}
            if secret_name := item.get("credentialsSecret"):
                secret = await kube.get(core_path(operator_namespace, "secrets", secret_name))
                if secret is None:
                    raise ValueError(f"credentials Secret {operator_namespace}/{secret_name} does not exist")
                admin = {k: Sensitive(base64.b64decode(v)) for k, v in (secret.get("data") or {}).items()}
            provider = registry.build(name, type_name, item.get("config") or {}, admin, kube, egress=egress)
            provider.access = access
            providers[name] = provider
            if access is None:
                log.warning("dynamic-credential provider %r (%s) has no `allow` rule: no WorkspaceSecret may use it "
                            "(add allow: {namespaces: [...], users: [...]})", name, type_name)
            else:
                log.info("dynamic-credential provider %r (%s) configured for namespaces %s, users %s", name, type_name,
                         list(access.namespaces or ["*"]), list(access.users or ["*"]))
        except Exception as exc:  # noqa: BLE001 - one broken provider must not stop the others
            broken[name] = f"{type(exc).__name__}: {exc}"
            log.error("dynamic-credential provider %r (%s) is unavailable: %s", name, type_name, broken[name])
    return providers, broken
