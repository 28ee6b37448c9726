"""The secret-leak scanner of the e2e suite must really find planted values (and only those)."""

import base64
import json

import pytest

from workspace_secrets.user_keys import sshkeys
from workspace_secrets.user_keys.sshkeys import KeySpec
from secret_hygiene import (
    MIN_VALUE_CHARS,
    SecretHygiene,
    flatten_strings,
    needles_for_secret,
    report,
)

KEY = sshkeys.generate(KeySpec(), comment="alice@test").private_openssh.reveal()
TOKEN = b"ghp_0123456789abcdefghijklmnopqrstuvwxyz"


def hygiene_with(data: dict[str, bytes]) -> SecretHygiene:
    hygiene = SecretHygiene()
    hygiene.add_secret("ns", "s", data)
    return hygiene


def pem_body_lines(pem: bytes) -> list[str]:
    return [line for line in pem.decode().splitlines() if not line.startswith("-----")]


@pytest.mark.parametrize(
    "plant",
    [
        pytest.param(lambda: TOKEN.decode(), id="raw token"),
        pytest.param(lambda: base64.b64encode(TOKEN).decode(), id="base64 token"),
        pytest.param(lambda: KEY.decode(), id="raw pem"),
        pytest.param(lambda: base64.b64encode(KEY).decode(), id="base64 pem"),
        pytest.param(lambda: pem_body_lines(KEY)[1], id="one pem line"),
        pytest.param(lambda: KEY.decode()[:256], id="first 256 characters of the key"),
    ],
)
def test_a_planted_value_is_found_in_a_log(plant):
    hygiene = hygiene_with({"ssh-privatekey": KEY, "token": TOKEN})
    log = f"2026-11-29 12:00:00 INFO reconciling\nsomething {plant()} happened\nmore\n"
    leaks = hygiene.find_leaks({"operator.log": log})
    assert leaks, "the planted value was not found"
    assert all(leak.place.startswith("operator.log (line ") for leak in leaks)


def test_the_report_names_the_line():
    hygiene = hygiene_with({"token": TOKEN})
    [leak] = hygiene.find_leaks({"operator.log": f"one\ntwo\nthree {TOKEN.decode()}\n"})
    assert leak.place == "operator.log (line 3)" and leak.needle.origin == "Secret ns/s[token]"


def test_a_value_inside_kopfs_json_annotation_is_found():
    hygiene = hygiene_with({"ssh-privatekey": KEY})
    inner = json.dumps({"spec": {"display": [{"key": "k", "value": KEY.decode()}]}})
    hygiene.add_object("WorkspaceSecret ns/x", {"metadata": {"annotations": {"workspace-secrets.io/last-handled-configuration": inner}}})
    leaks = hygiene.find_leaks()
    assert {leak.needle.form for leak in leaks} >= {"value", "line 2"}


def test_a_value_in_an_event_message_is_found():
    hygiene = hygiene_with({"password": b"correct horse battery staple"})
    hygiene.add_object("Event ns/e", {"reason": "Oops", "message": "login with correct horse battery staple failed"})
    assert [str(leak).split(" (sha256")[0] for leak in hygiene.find_leaks()] == ["value of Secret ns/s[password]"]


def test_clean_texts_have_no_leaks_and_public_entries_are_not_secret():
    public_key = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@x\n"
    hygiene = hygiene_with({"ssh-privatekey": KEY, "ssh-publickey": public_key, "known_hosts": b"github.com " + public_key})
    hygiene.add_object("WorkspaceSecret ns/x", {"status": {"sshPublicKey": public_key.decode().strip()}})
    log = "Created Secret 'x' with ed25519 key SHA256:abc.\n-----BEGIN OPENSSH PRIVATE KEY-----\n"
    assert hygiene.find_leaks({"operator.log": log}) == []


def test_short_values_are_not_searched():
    assert needles_for_secret("ns", "s", {"flag": b"true", "user": b"alice"}) == []
    assert len(needles_for_secret("ns", "s", {"pw": b"x" * MIN_VALUE_CHARS})) == 2  # value and base64


def test_binary_values_are_searched_by_base64():
    blob = bytes(range(200, 256)) * 2
    hygiene = hygiene_with({"keystore": blob})
    assert hygiene.find_leaks({"log": "dump " + base64.b64encode(blob).decode()})


def test_reports_never_contain_the_value():
    hygiene = hygiene_with({"ssh-privatekey": KEY, "token": TOKEN})
    leaks = hygiene.find_leaks({"log": KEY.decode() + TOKEN.decode()})
    text = report(leaks) + repr(leaks)
    assert leaks and TOKEN.decode() not in text
    assert not any(line in text for line in pem_body_lines(KEY))


def test_flatten_strings_reaches_nested_json():
    text = flatten_strings({"a": ["x", {"b": json.dumps({"c": "deep\nvalue"})}], "n": 3})
    assert "deep\nvalue" in text and "3" in text


@pytest.mark.parametrize("spec", [KeySpec(sshkeys.KeyType.ECDSA), KeySpec(sshkeys.KeyType.RSA, 3072), KeySpec()])
def test_the_public_half_of_a_private_key_is_no_leak_but_the_private_half_is(spec):
    # A private key file repeats the public key; with the right base64 alignment a whole line of it is a
    # piece of the public key line that status rightly shows. Only the secret lines count.
    pair = sshkeys.generate(spec, comment="jo@test")
    private = pair.private_openssh.reveal()
    hygiene = hygiene_with({"ssh-privatekey": private})
    status = {"status": {"sshPublicKey": pair.public_openssh}}
    hygiene.add_object("WorkspaceSecret ns/x", status)
    assert hygiene.find_leaks() == []
    hygiene.add_object("WorkspaceSecret ns/y", {"status": {"oops": private.decode()}})
    assert {leak.place.split(" (")[0] for leak in hygiene.find_leaks()} == {"WorkspaceSecret ns/y"}


def test_a_line_shared_with_the_public_key_is_found_public_for_ecdsa_keys_at_least_sometimes():
    # Guards the test above against testing nothing: ECDSA key files do contain such lines.
    found = False
    for _ in range(20):
        pair = sshkeys.generate(KeySpec(sshkeys.KeyType.ECDSA), comment="jo@test")
        lines = pem_body_lines(pair.private_openssh.reveal())
        found = found or any(len(line) > 20 and line in pair.public_openssh for line in lines)
    assert found


def test_boilerplate_lines_shared_by_different_keys_are_not_secret():
    first, second = (sshkeys.generate(KeySpec(), comment="a").private_openssh.reveal() for _ in range(2))
    header = pem_body_lines(first)[0]
    assert header == pem_body_lines(second)[0], "ed25519 OpenSSH keys share their first line"
    hygiene = hygiene_with({"ssh-privatekey": first})
    hygiene.add_secret("ns", "other", {"ssh-privatekey": second})
    assert hygiene.find_leaks({"log": f"x {header} y"}) == []
    assert hygiene.find_leaks({"log": f"x {pem_body_lines(second)[2]} y"})
