"""A brought key is decrypted off the event loop, and answered the same way whether missing or not the user's
(issue 14, instances 7 and 12)."""

from __future__ import annotations

import asyncio
import base64
import time

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.user_keys.service import UserKeys
from workspace_secrets.workspace_secret.keys import Keys

PASSPHRASE = b"correct horse"


def encrypted_key(rounds: int) -> bytes:
    encryption = serialization.PrivateFormat.OpenSSH.encryption_builder().kdf_rounds(rounds).build(PASSPHRASE)
    return ed25519.Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption)


SECRETS = "/api/v1/namespaces/team/secrets"


def cluster(secrets: dict[str, dict]) -> FakeKube:
    kube = FakeKube()
    for name, body in secrets.items():
        kube.put(f"{SECRETS}/{name}", body)
    return kube


def secret(name: str, labels: dict, data: dict[str, bytes]) -> dict:
    return {"metadata": {"name": name, "namespace": "team", "resourceVersion": "1", "labels": labels},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def brought_keys(kube: FakeKube) -> Keys:
    """What the WorkspaceSecret controller uses for a brought key (spec.ssh.existingSecretRef)."""
    return Keys(kube, UserKeys(kube), None, written=lambda obj, component, operation: None)  # type: ignore[arg-type]


def ws(ref: str) -> WorkspaceSecret:
    return WorkspaceSecret.from_body({
        "metadata": {"name": "alice-ws", "namespace": "team", "uid": "u1"},
        "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"},
                 "ssh": {"existingSecretRef": {"name": ref, "passphraseKey": "passphrase"}}},
    })


def test_decrypting_a_brought_key_never_stalls_the_event_loop():
    kube = cluster({"k": secret("k", {c.LABEL_USER: "alice"}, {"ssh-privatekey": encrypted_key(64), "passphrase": PASSPHRASE})})
    keys = brought_keys(kube)

    async def main():
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        key, problem = await keys.brought(ws("k"))
        took = time.perf_counter() - started
        stop.set()
        await task
        again = await keys.brought(ws("k"))  # cached by resourceVersion: no second decryption
        return key, problem, took, gaps, again

    key, problem, took, gaps, again = asyncio.run(main())
    assert problem is None and key is not None and key.type == "ed25519"
    assert again == (key, None)
    # 64 bcrypt rounds take a noticeable time; the loop kept ticking all along.
    assert took > 0.05 and max(gaps) < max(0.25, took / 2), (took, max(gaps))


def test_missing_and_not_yours_are_one_answer_and_never_list_keys():
    kube = cluster({
        "bobs": secret("bobs", {c.LABEL_USER: "bob"}, {"id_rsa": b"x"}),
        "operators": secret("operators", {c.LABEL_USER: "alice", c.LABEL_MANAGED_BY: c.OPERATOR_NAME}, {"ssh-privatekey": b"x"}),
        "mine": secret("mine", {c.LABEL_USER: "alice"}, {"id_rsa": b"x"}),
    })
    keys = brought_keys(kube)
    answers = {name: asyncio.run(keys.brought(ws(name)))[1] for name in ("missing", "bobs", "operators", "mine")}
    normalized = {name: p.message.replace(f"'{name}'", "'X'") for name, p in answers.items() if p is not None}
    assert normalized["missing"] == normalized["bobs"] == normalized["operators"]
    assert {answers[n].reason for n in ("missing", "bobs", "operators")} == {"ExistingKeyNotFound"}
    # Her own Secret: the missing key is named, the keys it has are not listed.
    assert answers["mine"].reason == "InvalidExistingKey" and "has no key 'ssh-privatekey'" in answers["mine"].message
    assert "id_rsa" not in answers["mine"].message


def test_a_refused_key_is_not_decrypted_again_until_its_secret_changes(monkeypatch):
    """A wrong passphrase on an expensive key costs one decryption per version of its Secret, not one per
    reconcile: the re-checks of an unbound WorkspaceSecret must not keep the key threads busy for others."""
    from workspace_secrets.user_keys import sshkeys

    calls = []
    real_load = sshkeys.load

    def counting_load(*args, **kwargs):
        calls.append(1)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(sshkeys, "load", counting_load)
    wrong = secret("k", {c.LABEL_USER: "alice"}, {"ssh-privatekey": encrypted_key(16), "passphrase": b"wrong"})
    kube = cluster({"k": wrong})
    keys = brought_keys(kube)
    first = asyncio.run(keys.brought(ws("k")))[1]
    second = asyncio.run(keys.brought(ws("k")))[1]
    assert first is not None and first.reason == "InvalidExistingKey" and second == first
    assert len(calls) == 1
    # The user fixes the passphrase: a new resourceVersion, checked again, and accepted.
    kube.edit(f"{SECRETS}/k", {"data": {"passphrase": base64.b64encode(PASSPHRASE).decode()}})
    key, problem = asyncio.run(keys.brought(ws("k")))
    assert problem is None and key is not None and len(calls) == 2
