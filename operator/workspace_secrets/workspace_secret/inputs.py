"""Whether anything must change for a WorkspaceSecret, decided without an API request (pure).

A reconcile that leaves a WorkspaceSecret Ready records in `status.inputsDigest` a digest of everything its Secret
was composed from: the object's essence (uid, generation, labels, annotations), the resourceVersion of the user's key
Secret it read, of each of the user's own Secrets there were, and of the workspace Secret as written. Kubernetes gives
every write of an object a new resourceVersion, so while the same digest can be computed from the object's body and
the operator's watch-fed index of Secret versions (runtime/secret_index.py), none of those inputs changed and neither
did the Secret: the reconcile would find nothing to do. That is what makes a restart with every object Ready and a
periodic resync cost no request per unchanged object.

Only for objects whose outcome depends on nothing else (`eligible`): no dynamic credentials (a ledger with rotation
times, revocations), no userTokens (tokens expire), a key the operator generates (a brought key lives in the user's
own Secret, which is not indexed). Those always take the full reconcile.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import find as find_condition
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.user_keys.sshkeys import KeySpec, KeyType

#: Bumped whenever what goes into the Secret changes for the same inputs (a new operator version composing it
#: differently must not skip objects composed by the old one).
FORMAT = "v1"

#: (name, resourceVersion) of a Secret.
Version = tuple[str, str]


def eligible(ws: WorkspaceSecret) -> bool:
    """Whether this WorkspaceSecret's Secret depends only on inputs the digest covers."""
    return not ws.credentials and not ws.user_tokens and ws.ssh.existing_secret_ref is None and not ws.deleting


def key_secret_name(ws: WorkspaceSecret) -> str:
    """The name of the user's key Secret this WorkspaceSecret's generated key lives in."""
    return user_key_secret_name(ws.user, KeySpec(KeyType(ws.ssh.key_type), ws.ssh.rsa_bits))


def digest(essence: tuple[Any, ...], *, key: Version, secret: Version, user_secrets: Iterable[Version]) -> str:
    """The digest of a WorkspaceSecret's inputs (deterministic across processes, unlike hash())."""
    canonical = json.dumps([FORMAT, list(essence), list(key), list(secret), sorted(map(list, user_secrets))],
                           separators=(",", ":"), default=list)
    return f"{FORMAT}-{hashlib.sha256(canonical.encode()).hexdigest()[:40]}"


def settled(body: Mapping[str, Any]) -> bool:
    """Whether the object's status says its last reconcile saw this generation, found it Ready and bound it: only
    then may a matching digest stand for "nothing to do" (anything else -- a problem to re-check, a workspace to look
    for -- takes the full reconcile)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    generation = meta.get("generation")
    if meta.get("deletionTimestamp") or not status.get("inputsDigest") or status.get("observedGeneration") != generation:
        return False
    ready = find_condition(status.get("conditions"), c.CONDITION_READY) or {}
    if ready.get("status") != "True" or ready.get("observedGeneration", generation) != generation:
        return False
    bound = status.get("workspaceUID")
    return bool(bound) and any(o.get("uid") == bound for o in meta.get("ownerReferences") or ())
