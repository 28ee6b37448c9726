"""The pod-injection mutating admission webhook (kopf admission), for pods labelled with a WorkspaceSecret.

Registered by `register()` only when the webhook is enabled: kopf refuses to start with admission
handlers but no webhook server. The API server reaches it at the URL path `/<id>`; the
MutatingWebhookConfiguration (domain/webhook_configuration.py) selects labelled pods only, so this
handler never sees another pod. The kopf filters below repeat that selection as a safety net; the
configuration's `sideEffects: NoneOnDryRun` matches what the handler does (no Event on a dry run).
"""

from __future__ import annotations

from typing import Any

import kopf

from ..api import constants as c
from ..controllers.pod_injection import Refused
from ..domain.pod_injection import apply_patch
from ..kube.client import KubeError


async def mount_workspace_secret(
    body: kopf.Body, patch: kopf.Patch, warnings: list[str], dryrun: bool, memo: kopf.Memo, **_: Any
) -> None:
    try:
        admission = await memo.pod_injection.admit(body, namespace=body.metadata.namespace or "", dry_run=dryrun)
    except Refused as exc:
        raise kopf.AdmissionError(str(exc), code=403) from None
    except KubeError as exc:
        raise kopf.AdmissionError(
            f"{c.OPERATOR_NAME} could not read the pod's WorkspaceSecret (Kubernetes API answered {exc.status} "
            f"{exc.reason}); retry, or check the operator's RBAC for workspacesecrets get.", code=503,
        ) from None
    warnings.extend(admission.warnings)
    if admission.patch:
        ops = admission.patch

        def injected(raw: dict[str, Any]) -> None:  # kopf diffs the result into the JSON patch it answers
            result = apply_patch(raw, ops)
            raw.clear()
            raw.update(result)

        patch.fns.append(injected)


_registered: set[int] = set()


def register(registry: kopf.OperatorRegistry | None = None) -> None:
    """Register the webhook handler (once per registry)."""
    registry = registry or kopf.get_default_registry()
    if id(registry) in _registered:
        return
    _registered.add(id(registry))
    kopf.on.mutate(
        "v1", "pods",
        id=c.WEBHOOK_ID,
        operations=["CREATE"],
        labels={c.LABEL_WORKSPACE_SECRET: kopf.PRESENT},
        side_effects=True,
        registry=registry,
    )(mount_workspace_secret)
