"""Kubernetes ServiceAccount tokens (TokenRequest API), bound to an anchor object so they die with it.

Each issued token is bound to a small "anchor" Secret owned by the WorkspaceSecret. The API server
rejects a bound token once its object is gone, so revoking = deleting the anchor, and deleting the
WorkspaceSecret (through its ownerReference) kills every token even if the operator is down. The anchor
carries the scope tag as a label, which is how `list` finds tokens minted before a crash.
"""

from __future__ import annotations

import base64
import fnmatch
import os
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import yaml

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.kube import Kube, KubeError, core_path
from workspace_secrets.credentials.providers.base import FileContext, FileRef, Issued, ProviderError, Scope

LABEL_SCOPE = f"{c.GROUP}/credential-scope"
DEFAULT_SERVER = "https://kubernetes.default.svc"
#: The cluster CA of an operator running in the cluster (the default when config.certificateAuthorityData is unset).
IN_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


def kubeconfig(server: str, ca_data: str | None, namespace: str, token_file: str) -> str:
    """A kubeconfig whose user reads the token from `token_file` (client-go and kubectl re-read it, so a
    rotated token -- kubelet updates the mounted file in place -- is used without touching the kubeconfig)."""
    cluster: dict[str, Any] = {"server": server}
    if ca_data:
        cluster["certificate-authority-data"] = ca_data
    document = {
        "apiVersion": "v1", "kind": "Config", "current-context": "workspace", "preferences": {},
        "clusters": [{"name": "workspace", "cluster": cluster}],
        "users": [{"name": "workspace", "user": {"tokenFile": token_file}}],
        "contexts": [{"name": "workspace", "context": {"cluster": "workspace", "user": "workspace", "namespace": namespace}}],
    }
    return yaml.safe_dump(document, sort_keys=True)


class KubernetesTokenProvider:
    type_name: ClassVar[str] = "kubernetes-token"
    access = None  # the platform's allow rule (credentials.ledger.AccessRule), set by credentials/setup.py

    def __init__(self, name: str, kube: Kube, *, allowed_service_accounts: list[str], default_audiences: list[str],
                 max_expiration: int, default_expiration: int, server: str = DEFAULT_SERVER,
                 ca_data: str | None = None) -> None:
        self.name = name
        self._server = server
        self._ca_data = ca_data
        self._kube = kube
        self._allowed = allowed_service_accounts
        self._audiences = default_audiences
        self._max_expiration = max_expiration
        self._default_expiration = default_expiration

    @classmethod
    def from_config(cls, *, name: str, config: Mapping[str, Any], admin: Mapping[str, Any], kube: Kube) -> KubernetesTokenProvider:
        """`allowedServiceAccounts` (globs) and `audiences` are required: a token provider never defaults to
        every ServiceAccount of the namespace, nor to the API server's own audience (issue 14, instance 10)."""
        accounts, audiences = config.get("allowedServiceAccounts"), config.get("audiences")
        if not isinstance(accounts, list) or not accounts or not all(isinstance(a, str) and a for a in accounts):
            raise ValueError("config.allowedServiceAccounts is required: a list of ServiceAccount name patterns "
                             "(there is no allow-all default; [\"*\"] must be written out)")
        if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) and a for a in audiences):
            raise ValueError("config.audiences is required: the audiences the tokens are minted for "
                             "(a WorkspaceSecret may ask for a subset)")
        return cls(
            name, kube,
            allowed_service_accounts=list(accounts),
            default_audiences=list(audiences),
            max_expiration=int(config.get("maxExpirationSeconds", 86400)),
            default_expiration=int(config.get("expirationSeconds", 3600)),
            server=str(config.get("server") or DEFAULT_SERVER),
            ca_data=_ca_data(config.get("certificateAuthorityData")),
        )

    def env(self) -> Mapping[str, str]:
        return {}  # a token is used as a file (token, kubeconfig) by kubectl/clients; no value env var

    def file_env(self) -> Mapping[str, FileRef]:
        return {"KUBECONFIG": FileRef("kubeconfig")}

    def files(self, values: Mapping[str, Sensitive], where: FileContext) -> Mapping[str, Sensitive]:
        if "token" not in values:
            return {}
        return {"kubeconfig": Sensitive(kubeconfig(self._server, self._ca_data, where.namespace, where.path("token")))}

    def validate(self, parameters: Mapping[str, str]) -> str | None:
        account = parameters.get("serviceAccount")
        if not account:
            return "serviceAccount is required (a ServiceAccount in the WorkspaceSecret's namespace)"
        if not any(fnmatch.fnmatchcase(account, pattern) for pattern in self._allowed):
            return f"serviceAccount {account!r} is not allowed by provider {self.name!r} (allowed: {', '.join(self._allowed)})"
        asked = [a.strip() for a in parameters.get("audiences", "").split(",") if a.strip()]
        if not_allowed := [a for a in asked if a not in self._audiences]:
            return (f"audiences {', '.join(map(repr, not_allowed))} are not allowed by provider {self.name!r} "
                    f"(allowed: {', '.join(self._audiences)}); ask for a subset, or omit audiences to get all of them")
        try:
            seconds = int(parameters.get("expirationSeconds", self._default_expiration))
        except ValueError:
            return "expirationSeconds must be an integer"
        if not 600 <= seconds <= self._max_expiration:
            return f"expirationSeconds must be between 600 and {self._max_expiration}, got {seconds}"
        return None

    async def issue(self, scope: Scope, parameters: Mapping[str, str], generation: int) -> Issued:
        anchor = await self._create_anchor(scope, f"{scope.workspace[:40]}-{scope.entry[:40]}-tok-".lower())
        anchor_name = anchor["metadata"]["name"]
        seconds = int(parameters.get("expirationSeconds", self._default_expiration))
        audiences = [a.strip() for a in parameters.get("audiences", "").split(",") if a.strip()] or self._audiences
        if any(a not in self._audiences for a in audiences) or not audiences:  # validate() said so; never mint otherwise
            raise ProviderError(f"audiences outside provider {self.name!r}'s allowed audiences", retryable=False)
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": audiences or None,
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": anchor_name, "uid": anchor["metadata"]["uid"]},
            },
        }
        account = parameters["serviceAccount"]
        try:
            response = await self._kube.create(core_path(scope.namespace, "serviceaccounts", account, subresource="token"), request)
        except KubeError as exc:
            raise ProviderError(f"TokenRequest for ServiceAccount {account!r} failed: {exc.status} {exc.reason}: {exc.message}",
                                retryable=exc.status >= 500 or exc.status == 429) from None
        expires = response["status"].get("expirationTimestamp")
        expires_at = datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) if expires else (
            datetime.now(timezone.utc) + timedelta(seconds=seconds))
        return Issued(id=anchor_name, values={"token": Sensitive(response["status"]["token"])}, expires_at=expires_at)

    async def _create_anchor(self, scope: Scope, prefix: str) -> dict[str, Any]:
        """A new anchor under a name the API server makes up (generateName): nobody can create a Secret at that
        name first, and an anchor of an interrupted attempt is found by its scope label (list) and revoked as an
        orphan before the next one is minted."""
        body = {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {
                "generateName": prefix, "namespace": scope.namespace,
                "labels": {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_TOKEN_ANCHOR, LABEL_SCOPE: scope.tag},
                "annotations": {"workspace-secrets.io/purpose": "Binds a ServiceAccount token: deleting this Secret revokes it."},
                "ownerReferences": [{"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "name": scope.workspace,
                                     "uid": scope.workspace_uid, "blockOwnerDeletion": False}],
            },
        }
        try:
            return await self._kube.create(core_path(scope.namespace, "secrets"), body)
        except KubeError as exc:
            raise ProviderError(f"could not create token anchor: {exc.status} {exc.reason}") from None

    async def revoke(self, scope: Scope, credential_id: str) -> None:
        path = core_path(scope.namespace, "secrets", credential_id)
        try:
            anchor = await self._kube.get(path)
            if anchor is None or not _is_anchor_of(anchor, scope):
                return  # gone, or never ours: the operator deletes only its own anchors
            await self._kube.delete(path, uid=anchor["metadata"].get("uid"))
        except KubeError as exc:
            raise ProviderError(f"could not delete token anchor {credential_id}: {exc.status} {exc.reason}") from None

    async def list(self, scope: Scope) -> list[str]:
        try:
            listing = await self._kube.list(core_path(scope.namespace, "secrets"), label_selector=f"{LABEL_SCOPE}={scope.tag}")
        except KubeError as exc:
            raise ProviderError(f"could not list token anchors: {exc.status} {exc.reason}") from None
        return [item["metadata"]["name"] for item in listing.get("items", ())
                if not item["metadata"].get("deletionTimestamp") and _is_anchor_of(item, scope)]

    async def release(self, scope: Scope) -> None:
        return None  # nothing per scope besides the anchors

    async def sweep(self) -> list[str]:
        return []  # anchors are owned by their WorkspaceSecret: Kubernetes' garbage collector sweeps them


def _ca_data(configured: Any) -> str | None:
    """config.certificateAuthorityData (base64 PEM, as in a kubeconfig), else the in-cluster CA of the operator's
    own pod (the same cluster), else None (the workspace's trust store)."""
    if configured:
        text = str(configured).strip()
        try:
            if b"BEGIN CERTIFICATE" not in base64.b64decode(text, validate=True):
                raise ValueError
        except ValueError:
            raise ValueError("config.certificateAuthorityData must be base64 of the cluster's PEM CA certificate(s), as in a kubeconfig") from None
        return text
    if os.path.exists(IN_CLUSTER_CA):
        with open(IN_CLUSTER_CA, "rb") as f:
            return base64.b64encode(f.read()).decode()
    return None


def _is_anchor_of(secret: Mapping[str, Any], scope: Scope) -> bool:
    """Whether `secret` is an anchor the operator made for this scope: our labels and the WorkspaceSecret as its
    owner (the admission policies let only the platform write Secrets owned by our kinds)."""
    meta = secret.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (labels.get(c.LABEL_MANAGED_BY) == c.OPERATOR_NAME and labels.get(c.LABEL_COMPONENT) == c.COMPONENT_TOKEN_ANCHOR
            and labels.get(LABEL_SCOPE) == scope.tag
            and any(o.get("kind") == c.WORKSPACE_SECRET_KIND and (o.get("uid") == scope.workspace_uid or not scope.workspace_uid)
                    for o in meta.get("ownerReferences") or ()))
