"""The pod-injection mutating admission webhook (kopf admission), for pods labelled with a WorkspaceSecret.

Registered by `register()` only when the webhook is enabled: kopf refuses to start with admission
handlers but no webhook server. The API server reaches it at the URL path `/<id>`; the
MutatingWebhookConfiguration (runtime/webhook/configuration.py) selects labelled pods only, so this
handler never sees another pod. The kopf filters below repeat that selection as a safety net; the
configuration's `sideEffects: NoneOnDryRun` matches what the handler does (no Event on a dry run).
"""

from __future__ import annotations

from typing import Any

import kopf

from workspace_secrets.api import constants as c
from workspace_secrets.app import App
from workspace_secrets.pod_injection.controller import Refused
from workspace_secrets.runtime.errors import admission_error


async def mount_workspace_secret(
    body: kopf.Body, patch: kopf.Patch, warnings: list[str], dryrun: bool, memo: Any, **_: Any
) -> None:
    pod_injection = App.of(memo).pod_injection
    assert pod_injection is not None, "registered only with the webhook enabled"
    try:
        admission = await pod_injection.admit(body, namespace=body.metadata.namespace or "", dry_run=dryrun)
    except Refused as exc:
        raise kopf.AdmissionError(str(exc), code=403) from None
    except Exception as exc:
        raise admission_error(exc) from None
    warnings.extend(admission.warnings)
    if admission.patch:
        patch.fns.append(admission.apply)  # kopf diffs the result into the JSON patch it answers


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
