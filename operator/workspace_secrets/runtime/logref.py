"""Object references on log records, so JSON logs say which object a line is about.

kopf's JSON formatter (`--log-format json`, with `log_refkey="object"` set in cli.py) writes a record's
`k8s_ref` under the key `object`; its handler loggers already set it, and ours do the same through
`log_extra()`. `k8s_skip` keeps kopf from also posting our warnings as Kubernetes Events (we post our
own Events, with stable reasons)."""

from __future__ import annotations

from typing import Any


def log_extra(api_version: str, kind: str, namespace: str | None, name: str, uid: str | None = None) -> dict[str, Any]:
    return {
        "k8s_ref": {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "namespace": namespace},
        "k8s_skip": True,
    }
