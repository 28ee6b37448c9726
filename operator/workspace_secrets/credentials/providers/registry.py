"""Provider types by the name used in the operator's provider configuration.

Modules are imported only when a provider of that type is configured, so boto3 or psycopg never weigh on
an operator that does not use them. Adding a provider type = one module + one line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

PROVIDER_TYPES: dict[str, str] = {
    "kubernetes-token": "workspace_secrets.credentials.providers.kubernetes_token:KubernetesTokenProvider",
    "aws-iam": "workspace_secrets.credentials.providers.aws_iam:AwsIamProvider",
    "postgresql": "workspace_secrets.credentials.providers.postgresql:PostgresRoleProvider",
    "gcp-service-account-key": "workspace_secrets.credentials.providers.gcp_iam:GcpServiceAccountKeyProvider",
    "twilio-api-key": "workspace_secrets.credentials.providers.twilio:TwilioApiKeyProvider",
}


def provider_class(type_name: str) -> Any:
    try:
        target = PROVIDER_TYPES[type_name]
    except KeyError:
        raise ValueError(f"unknown provider type {type_name!r}; known: {', '.join(sorted(PROVIDER_TYPES))}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


#: Provider types whose clients speak HTTP(S): they take the operator's egress (proxies, CAs). postgresql (libpq's
#: own protocol and sslrootcert) and kubernetes-token (the operator's own API client) do not.
HTTP_TYPES = frozenset({"aws-iam", "gcp-service-account-key", "twilio-api-key"})


def build(name: str, type_name: str, config: Mapping[str, Any], admin: Mapping[str, Any], kube: Any, *, egress: Any = None) -> Any:
    cls = provider_class(type_name)
    if type_name in HTTP_TYPES:
        return cls.from_config(name=name, config=config, admin=admin, kube=kube, egress=egress)
    return cls.from_config(name=name, config=config, admin=admin, kube=kube)
