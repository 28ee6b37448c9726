"""The session's secret-hygiene check really detects leaks: plant secret values in the places it watches
(an annotation, a status field, an Event, a log file) on the real API server and run the same collector
the conftest runs, on a fresh scanner. Nothing planted here reaches the session's own scanner: the
namespace is not a wso-e2e-* one, and it is emptied before the test ends.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timezone

from helpers import Api, wait_for
from hygiene import operator_logs, snapshot_namespace

from workspace_secrets.api import constants as c
from workspace_secrets.user_keys import sshkeys
from workspace_secrets.user_keys.sshkeys import KeySpec
from secret_hygiene import SecretHygiene, report


def test_planted_values_are_found_and_reported_without_the_value(cluster, tmp_path):
    name = f"wso-hygiene-{secrets.token_hex(3)}"
    with cluster.api_client() as client:
        api = Api(client)
        api.core.create_namespace({"metadata": {"name": name}})
        try:
            key = sshkeys.generate(KeySpec(), comment="planted@test").private_openssh.reveal()
            token = ("tok_" + secrets.token_hex(20)).encode()
            api.create_secret(name, "planted", {"ssh-privatekey": key, "token": token})
            key_line = [line for line in key.decode().splitlines() if not line.startswith("-----")][2]

            # One WorkspaceSecret with a key line in a JSON annotation (like kopf's, which the operator would
            # overwrite if it runs) and the token in its status; one Event with the base64 of the token; one
            # "operator log" with the key's first 256 characters.
            api.create_ws(name, "leaky", {"user": "leaky", "workspaceRef": {"kind": "Pod", "name": "p"}},
                          annotations={"example.com/config": f'{{"note": "{key_line}"}}'})
            # (sshKeyRotation: a status field the operator, which may be running, keeps as it finds it.)
            api.custom.patch_namespaced_custom_object_status(
                c.GROUP, c.VERSION, name, c.WORKSPACE_SECRET_PLURAL, "leaky", {"status": {"sshKeyRotation": token.decode()}})
            now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            api.core.create_namespaced_event(name, {
                "metadata": {"name": "leaky.1"}, "involvedObject": {"kind": "WorkspaceSecret", "name": "leaky", "namespace": name},
                "reason": "Planted", "message": f"value {base64.b64encode(token).decode()}", "type": "Warning",
                "firstTimestamp": now, "lastTimestamp": now, "count": 1})
            (tmp_path / "operator.log").write_text(f"INFO fine\nDEBUG oops {key.decode()[:256]}\n")

            scanner = SecretHygiene()
            snapshot_namespace(scanner, client, name)
            leaks = scanner.find_leaks(operator_logs(tmp_path))
            found = {(leak.needle.origin, leak.place.split(" (")[0]) for leak in leaks}
            assert found >= {
                (f"Secret {name}/planted[ssh-privatekey]", f"WorkspaceSecret {name}/leaky"),
                (f"Secret {name}/planted[token]", f"WorkspaceSecret {name}/leaky"),
                (f"Secret {name}/planted[token]", f"Event {name}/leaky.1"),
                (f"Secret {name}/planted[ssh-privatekey]", f"operator log {tmp_path / 'operator.log'}"),
            }, report(leaks)
            text = report(leaks)
            assert token.decode() not in text and key_line not in text

            # The same objects without the plants: no leak.
            api.delete_ws(name, "leaky")
            api.core.delete_namespaced_event("leaky.1", name)
            wait_for(lambda: api.get_ws(name, "leaky") is None, what="the planted WorkspaceSecret gone")
            (tmp_path / "operator.log").write_text("INFO fine\n")
            clean = SecretHygiene()
            snapshot_namespace(clean, client, name)
            assert clean.needle_count > 0 and clean.find_leaks(operator_logs(tmp_path)) == []
        finally:
            (tmp_path / "operator.log").unlink(missing_ok=True)  # the session's own scan reads *.log files too
            for ws in api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, name, c.WORKSPACE_SECRET_PLURAL)["items"]:
                if not ws["metadata"].get("deletionTimestamp"):
                    api.delete_ws(name, ws["metadata"]["name"])
            wait_for(lambda: not api.custom.list_namespaced_custom_object(
                c.GROUP, c.VERSION, name, c.WORKSPACE_SECRET_PLURAL)["items"], what="planted objects gone")
            api.core.delete_namespace(name)
