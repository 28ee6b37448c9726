"""Every invalid WorkspaceSecret/UserToken in data/bad_input.yaml fails the way the table says.

Each case is applied to the real API server as a user would: `kubectl apply --validate=strict` (server-side
strict field validation, so an unknown field such as `namespace` is an error instead of being pruned).
It is then either refused at admission with a message naming the field, or -- where only the operator can
know (a broken bring-your-own key, a Secret that is not ours) -- accepted and answered with Ready=False, a
specific reason, a message and a Warning Event. Either way nothing that existed is changed.
"""

from __future__ import annotations

import base64
import copy
import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from helpers import Api, wait_for

from workspace_secrets.api import constants as c
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.user_keys.sshkeys import KeySpec

E2E_DIR = Path(__file__).resolve().parent
CASES: list[dict[str, Any]] = yaml.safe_load((E2E_DIR / "data" / "bad_input.yaml").read_text())
EXAMPLES = E2E_DIR.parents[1] / "examples"
USERTOKEN_CRD = "usertokens.workspace-secrets.io"
BASE_USER = "tester"


# --- keys for the bring-your-own cases (made fresh per run; nothing secret is stored in the table) --------
def _openssh(key: Any, encryption: ser.KeySerializationEncryption | None = None) -> bytes:
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, encryption or ser.NoEncryption())


def _pem(key: Any) -> bytes:
    return key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())


KEY_GENERATORS = {
    "ed25519": lambda: _openssh(ed25519.Ed25519PrivateKey.generate()),
    # Encrypted with a passphrase that is thrown away: no case can decrypt it.
    "ed25519-encrypted": lambda: _openssh(
        ed25519.Ed25519PrivateKey.generate(), ser.BestAvailableEncryption(secrets.token_hex(16).encode())
    ),
    "ed25519-truncated": lambda: (lambda k: k[: len(k) // 2])(_openssh(ed25519.Ed25519PrivateKey.generate())),
    "rsa-1024": lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    ),
    "ecdsa-secp256k1": lambda: _pem(ec.generate_private_key(ec.SECP256K1())),
    "dsa": lambda: _pem(dsa.generate_private_key(key_size=2048)),
    # What issue 14 (instance 7) tried: a KDF rounds field of 20,000 (minutes of CPU). Refused before decrypting.
    "ed25519-rounds-20000": lambda: _with_bcrypt_rounds(_openssh(
        ed25519.Ed25519PrivateKey.generate(),
        ser.PrivateFormat.OpenSSH.encryption_builder().kdf_rounds(4).build(b"passphrase")), 20_000),
}


def _with_bcrypt_rounds(pem: bytes, rounds: int) -> bytes:
    """Rewrite the rounds field of an encrypted OpenSSH key's envelope, as a tenant can with a text editor."""
    body = base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))
    offset = len(b"openssh-key-v1\x00")
    for _ in range(2):  # cipher name, KDF name
        offset += 4 + int.from_bytes(body[offset:offset + 4], "big")
    rounds_at = offset + 4 + 4 + int.from_bytes(body[offset + 4:offset + 8], "big")  # kdfoptions: salt, rounds
    body = body[:rounds_at] + rounds.to_bytes(4, "big") + body[rounds_at + 4:]
    encoded = base64.b64encode(body)
    lines = [encoded[i:i + 70] for i in range(0, len(encoded), 70)]
    return b"\n".join([b"-----BEGIN OPENSSH PRIVATE KEY-----", *lines, b"-----END OPENSSH PRIVATE KEY-----"]) + b"\n"


# --- the table ---------------------------------------------------------------------------------------
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def resolve_names(obj: Any) -> Any:
    """Replace {userKeyOf: U} by the name of the Secret where the operator keeps U's ed25519 key."""
    if isinstance(obj, dict):
        if set(obj) == {"userKeyOf"}:
            return user_key_secret_name(obj["userKeyOf"], KeySpec())
        return {key: resolve_names(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [resolve_names(item) for item in obj]
    return obj


def secret_value(value: str | dict) -> bytes:
    if isinstance(value, dict):
        return KEY_GENERATORS[value["generate"]]()
    return value.encode()


def test_the_table_is_well_formed():
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert len(CASES) >= 30
    for case in CASES:
        assert case.get("why"), case["id"]
        expect = case["expect"]
        assert set(expect) <= {"rejected", "ready", "pruned"} and expect, case["id"]
        assert not ("edit" in case and "ready" in expect), case["id"]
        for secret in case.get("secrets", ()):
            for value in secret["data"].values():
                assert isinstance(value, str) or value["generate"] in KEY_GENERATORS, case["id"]


# --- running a case ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(cluster) -> Api:
    return Api(cluster.api_client())


@pytest.fixture(scope="module")
def usertoken_base(cluster) -> dict | None:
    """The UserToken to start from: the first one in examples/ ({} if there is none). None while the CRD
    is not installed."""
    if cluster.kubectl("get", "crd", USERTOKEN_CRD, check=False).returncode != 0:
        return None
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "UserToken":
                return doc
    return {}


def base_manifest(case: dict, usertoken_base: dict | None) -> dict:
    kind = case.get("kind", c.WORKSPACE_SECRET_KIND)
    if kind == "UserToken":
        if usertoken_base is None:
            pytest.skip(f"CRD {USERTOKEN_CRD} is not installed")
        if not usertoken_base:
            pytest.fail(f"CRD {USERTOKEN_CRD} is installed but examples/ has no UserToken to start the cases from")
        spec = copy.deepcopy(usertoken_base["spec"])
        spec["user"] = BASE_USER
        return {"apiVersion": usertoken_base["apiVersion"], "kind": kind, "metadata": {"name": f"bad-{case['id']}"}, "spec": spec}
    return {
        "apiVersion": c.API_VERSION,
        "kind": kind,
        "metadata": {"name": f"bad-{case['id']}"},
        "spec": {"user": BASE_USER, "workspaceRef": {"kind": "Pod", "name": "bad-input-workspace"}},
    }


def manifest_for(case: dict, usertoken_base: dict | None) -> dict:
    if "manifest" in case:
        return resolve_names(case["manifest"])
    manifest = base_manifest(case, usertoken_base)
    manifest["metadata"] = merge_patch(manifest["metadata"], case.get("metadata") or {})
    manifest["spec"] = merge_patch(manifest["spec"], resolve_names(case.get("spec") or {}))
    return manifest


def plural(kind: str) -> str:
    return {c.WORKSPACE_SECRET_KIND: c.WORKSPACE_SECRET_PLURAL, "UserToken": "usertokens"}[kind]


def get_object(api: Api, namespace: str, manifest: dict) -> dict | None:
    try:
        return api.custom.get_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, plural(manifest["kind"]), manifest["metadata"]["name"]
        )
    except Exception as exc:  # noqa: BLE001 - ApiException 404 is the only expected one
        if getattr(exc, "status", None) == 404:
            return None
        raise


def kubectl_apply(cluster, namespace: str, manifest: dict):
    return cluster.kubectl("apply", "--validate=strict", "-n", namespace, "-f", "-", input=json.dumps(manifest), check=False)


def assert_rejected(result, substrings: list[str], case_id: str) -> None:
    assert result.returncode != 0, f"{case_id}: accepted, but it should have been refused at admission"
    for part in substrings:
        assert part in result.stderr, f"{case_id}: {part!r} not in the error:\n{result.stderr}"


def create_secrets(api: Api, namespace: str, case: dict) -> dict[str, dict[str, str]]:
    """Create the case's Secrets; return their digests (to prove later that nothing changed them)."""
    created = {}
    for spec in resolve_names(case.get("secrets") or []):
        name = spec.get("name") or user_key_secret_name(spec["userKeyOf"], KeySpec())
        api.create_secret(namespace, name, {k: secret_value(v) for k, v in spec["data"].items()}, labels=spec.get("labels"))
        created[name] = api.secret_digests(namespace, name)
    return created


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_bad_input(case, cluster, api, module_namespace, usertoken_base, request):
    ns = module_namespace
    expect = case["expect"]
    manifest = manifest_for(case, usertoken_base)
    is_workspace_secret = manifest["kind"] == c.WORKSPACE_SECRET_KIND
    if "edit" in case or "ready" in expect:
        request.getfixturevalue("wso_operator")

    if "edit" in case:
        created = kubectl_apply(cluster, ns, manifest)
        assert created.returncode == 0, created.stderr
        secret_name = manifest["spec"].get("secretName") or manifest["metadata"]["name"]
        if is_workspace_secret:
            api.wait_condition(ns, manifest["metadata"]["name"])
        before = get_object(api, ns, manifest)
        secret_before = api.secret_digests(ns, secret_name) if is_workspace_secret else None
        edited = copy.deepcopy(manifest)
        edited["spec"] = merge_patch(edited["spec"], case["edit"])
        assert_rejected(kubectl_apply(cluster, ns, edited), expect["rejected"], case["id"])
        after = get_object(api, ns, manifest)
        assert after["spec"] == before["spec"] and after["metadata"]["generation"] == before["metadata"]["generation"]
        if is_workspace_secret:
            assert api.secret_digests(ns, secret_name) == secret_before
        return

    if "rejected" in expect:
        assert_rejected(kubectl_apply(cluster, ns, manifest), expect["rejected"], case["id"])
        assert get_object(api, ns, manifest) is None, "a refused object must not exist"
        return

    setup = create_secrets(api, ns, case)
    if "pruned" in expect:
        # A client without strict validation (the API server's default is to warn): the field is dropped.
        api.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, plural(manifest["kind"]), manifest)
        stored = get_object(api, ns, manifest)
        for path in expect["pruned"]:
            parent = stored
            *parents, leaf = path.split(".")
            for part in parents:
                parent = parent[part]
            assert leaf not in parent, f"{path} was stored"
    else:
        applied = kubectl_apply(cluster, ns, manifest)
        assert applied.returncode == 0, applied.stderr

    name = manifest["metadata"]["name"]
    workspace_secret_before = None
    if case.get("after_ready"):
        api.wait_condition(ns, name)
        workspace_secret_before = api.secret_digests(ns, name)
        for change in case["after_ready"]:
            data = {k: base64.b64encode(secret_value(v)).decode() for k, v in change["data"].items()}
            api.core.patch_namespaced_secret(change["secret"], ns, {"data": data})
            setup.pop(change["secret"], None)
        # The operator notices a changed bring-your-own Secret at its next resync; touch the object so the
        # test need not wait for it.
        api.patch_ws(ns, name, {"metadata": {"annotations": {"test.workspace-secrets.io/touch": "1"}}})

    if "ready" in expect:
        wanted = expect["ready"]
        cond = api.wait_condition(ns, name, status="False", reason=wanted["reason"])
        for part in wanted.get("message", ()):
            assert part in cond["message"], f"{part!r} not in the Ready message: {cond['message']}"
        for part in wanted.get("absent", ()):
            assert part not in cond["message"], f"{part!r} must not be in the Ready message: {cond['message']}"
        warnings = [e for e in api.events_for(ns, name) if e.type == "Warning" and e.reason == wanted["reason"]]
        assert warnings, f"no Warning Event {wanted['reason']}"
    # Nothing that existed was changed, and nothing was materialized from bad input.
    for secret_name, digests in setup.items():
        assert api.secret_digests(ns, secret_name) == digests, f"Secret {secret_name} was changed"
    if workspace_secret_before is not None:
        assert api.secret_digests(ns, name) == workspace_secret_before, "the working Secret was changed"
    elif name not in setup:
        assert api.get_secret(ns, name) is None, "a Secret was materialized from bad input"
