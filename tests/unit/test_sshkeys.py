"""SSH keys: generated and brought keys round-trip through cryptography and through OpenSSH itself."""

import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from workspace_secrets.user_keys import sshkeys
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.user_keys.sshkeys import InvalidKey, KeySpec, KeyType

SPECS = [
    KeySpec(KeyType.ED25519),
    KeySpec(KeyType.ECDSA),
    KeySpec(KeyType.RSA, 3072),
    KeySpec(KeyType.RSA, 4096),
]
needs_ssh_keygen = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="OpenSSH ssh-keygen not installed")


@pytest.fixture(scope="module")
def generated():
    return {spec: sshkeys.generate(spec, comment="alice@test") for spec in SPECS}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.slug)
def test_generated_key_round_trips_through_cryptography(generated, spec):
    pair = generated[spec]
    key = serialization.load_ssh_private_key(pair.private_openssh.reveal(), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert pair.public_openssh == f"{public} alice@test"
    assert pair.type == spec.slug
    expected_class = {KeyType.ED25519: ed25519.Ed25519PrivateKey, KeyType.ECDSA: ec.EllipticCurvePrivateKey, KeyType.RSA: rsa.RSAPrivateKey}
    assert isinstance(key, expected_class[spec.type])


@needs_ssh_keygen
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.slug)
def test_openssh_derives_the_same_public_key_and_fingerprint(generated, spec, tmp_path):
    pair = generated[spec]
    path = tmp_path / "id"
    path.write_bytes(pair.private_openssh.reveal())
    path.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert derived.split()[:2] == pair.public_openssh.split()[:2]
    listed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert listed.split()[1] == pair.fingerprint


def test_private_key_is_masked_everywhere(generated):
    pair = generated[SPECS[0]]
    secret_text = pair.private_openssh.reveal_text()
    for rendering in (repr(pair), str(pair), f"{pair.private_openssh}", repr(pair.private_openssh), str([pair.private_openssh])):
        assert "PRIVATE KEY" not in rendering and secret_text not in rendering
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(pair.private_openssh)
    assert Sensitive(b"x") == Sensitive(b"x") and Sensitive(b"x") != Sensitive(b"y")


def test_rsa_generation_rejects_sizes_outside_policy():
    with pytest.raises(ValueError, match="3072, 4096"):
        sshkeys.generate(KeySpec(KeyType.RSA, 2048), comment="x")


@needs_ssh_keygen
@pytest.mark.parametrize("algorithm,extra", [("ed25519", []), ("ecdsa", ["-b", "384"]), ("rsa", ["-b", "2048"])])
def test_brought_openssh_key_is_loaded_and_fingerprinted_like_ssh_keygen(tmp_path, algorithm, extra):
    path = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", algorithm, *extra, "-N", "", "-C", "me", "-f", str(path)], check=True)
    pair = sshkeys.load(path.read_bytes(), comment="bob@test")
    assert pair.public_openssh.split()[:2] == path.with_suffix(".pub").read_text().split()[:2]
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert listed.split()[1] == pair.fingerprint


@needs_ssh_keygen
def test_brought_encrypted_key_needs_the_right_passphrase_and_comes_out_decrypted(tmp_path):
    path = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "correct horse", "-f", str(path)], check=True)
    with pytest.raises(InvalidKey, match="passphrase-protected"):
        sshkeys.load(path.read_bytes(), comment="x")
    with pytest.raises(InvalidKey, match="passphrase does not decrypt"):
        sshkeys.load(path.read_bytes(), passphrase=b"wrong", comment="x")
    pair = sshkeys.load(path.read_bytes(), passphrase=b"correct horse", comment="x")
    decrypted = tmp_path / "plain"
    decrypted.write_bytes(pair.private_openssh.reveal())
    decrypted.chmod(0o600)
    # ssh-keygen reads it with an empty passphrase: the workspace can use it non-interactively.
    subprocess.run(["ssh-keygen", "-y", "-P", "", "-f", str(decrypted)], check=True, capture_output=True)


def test_brought_pem_key_is_normalized_to_openssh():
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pair = sshkeys.load(pem, comment="x")
    assert pair.private_openssh.reveal().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pair.type == "ecdsa-p256"


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty"),
        (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH public key pasted by mistake", "not a private key"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAnotbase64!!\n-----END OPENSSH PRIVATE KEY-----", "could not be parsed"),
    ],
)
def test_malformed_brought_keys_are_refused_with_a_reason(data, message):
    with pytest.raises(InvalidKey, match=message):
        sshkeys.load(data, comment="x")


def test_small_rsa_and_unsupported_curves_are_refused():
    small = rsa.generate_private_key(65537, 1024)
    pem = small.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(InvalidKey, match="1024 bits"):
        sshkeys.load(pem, comment="x")
    odd = ec.generate_private_key(ec.SECP256K1())
    pem = odd.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(InvalidKey, match="secp256k1"):
        sshkeys.load(pem, comment="x")


def test_invalid_key_errors_never_quote_key_material():
    garbage = b"-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LW1hdGVyaWFs\n-----END OPENSSH PRIVATE KEY-----"
    with pytest.raises(InvalidKey) as info:
        sshkeys.load(garbage, comment="x")
    assert "c2VjcmV0" not in str(info.value) and info.value.__cause__ is None


@pytest.mark.parametrize("spec", SPECS[:3], ids=lambda s: s.slug)
def test_serialization_is_canonical_so_an_unchanged_key_is_an_unchanged_secret(generated, spec):
    pair = generated[spec]
    again = sshkeys.load(pair.private_openssh.reveal(), comment="alice@test")
    assert again.private_openssh == pair.private_openssh  # no random check integers
    key = serialization.load_ssh_private_key(pair.private_openssh.reveal(), password=None)
    fresh = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    assert sshkeys.canonical_openssh(fresh) == pair.private_openssh.reveal()


# --- the work a brought key may cost is bounded before any of it is done (issue 14, instance 7) ----------
import base64 as _b64  # noqa: E402
import time as _time  # noqa: E402


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _with_bcrypt_rounds(pem: bytes, rounds: int) -> bytes:
    """Rewrite the rounds field of an encrypted OpenSSH key's envelope (what a tenant can do in a text editor)."""
    body = _b64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))
    offset = len(b"openssh-key-v1\x00")
    for _ in range(2):  # cipher name, kdf name
        offset += 4 + int.from_bytes(body[offset:offset + 4], "big")
    options_at = offset + 4
    salt_length = int.from_bytes(body[options_at:options_at + 4], "big")
    rounds_at = options_at + 4 + salt_length
    body = body[:rounds_at] + rounds.to_bytes(4, "big") + body[rounds_at + 4:]
    encoded = _b64.b64encode(body)
    return b"\n".join([b"-----BEGIN OPENSSH PRIVATE KEY-----", *[encoded[i:i + 70] for i in range(0, len(encoded), 70)],
                       b"-----END OPENSSH PRIVATE KEY-----"]) + b"\n"


def _encrypted_openssh(rounds: int) -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    encryption = serialization.PrivateFormat.OpenSSH.encryption_builder().kdf_rounds(rounds).build(b"pass")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, encryption)


def test_an_openssh_key_with_up_to_64_bcrypt_rounds_is_decrypted():
    pair = sshkeys.load(_encrypted_openssh(16), passphrase=b"pass", comment="x")
    assert pair.type == "ed25519"
    assert sshkeys.load(_encrypted_openssh(64), passphrase=b"pass", comment="x").type == "ed25519"


@pytest.mark.parametrize("rounds", [65, 20_000, 2**32 - 1])
def test_an_openssh_key_with_huge_bcrypt_rounds_is_refused_before_any_decryption(rounds):
    pem = _with_bcrypt_rounds(_encrypted_openssh(4), rounds)
    started = _time.perf_counter()
    with pytest.raises(InvalidKey) as info:
        sshkeys.load(pem, passphrase=b"pass", comment="x")
    assert _time.perf_counter() - started < 0.5
    message = str(info.value)
    assert f"asks for {rounds} rounds" in message and "at most 64" in message and "default is 16" in message


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(raw)]) + raw + content


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytes([parts[0] * 40 + parts[1]])
    for part in parts[2:]:
        chunk = [part & 0x7F]
        part >>= 7
        while part:
            chunk.insert(0, 0x80 | (part & 0x7F))
            part >>= 7
        out += bytes(chunk)
    return _der(0x06, out)


def _pem(label: str, der: bytes) -> bytes:
    encoded = _b64.b64encode(der)
    lines = [encoded[i:i + 64] for i in range(0, len(encoded), 64)]
    return b"\n".join([f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode()]) + b"\n"


def _pkcs8_encrypted(kdf: bytes) -> bytes:
    aes = _der(0x30, _der_oid("2.16.840.1.101.3.4.1.42") + _der(0x04, b"\x00" * 16))
    pbes2 = _der(0x30, _der_oid("1.2.840.113549.1.5.13") + _der(0x30, kdf + aes))
    return _pem("ENCRYPTED PRIVATE KEY", _der(0x30, pbes2 + _der(0x04, b"\x00" * 64)))


def test_a_pkcs8_key_with_huge_pbkdf2_iterations_is_refused_before_any_decryption():
    kdf = _der(0x30, _der_oid("1.2.840.113549.1.5.12") + _der(0x30, _der(0x04, b"salt" * 4) + _der_int(2_000_000_000)))
    started = _time.perf_counter()
    with pytest.raises(InvalidKey, match="PBKDF2.*2000000000 iterations.*at most 600000"):
        sshkeys.load(_pkcs8_encrypted(kdf), passphrase=b"pass", comment="x")
    assert _time.perf_counter() - started < 0.5


def test_a_pkcs8_key_with_huge_scrypt_parameters_is_refused():
    kdf = _der(0x30, _der_oid("1.3.6.1.4.1.11591.4.11") + _der(0x30, _der(0x04, b"salt" * 4) + _der_int(2**30) + _der_int(8) + _der_int(1)))
    with pytest.raises(InvalidKey, match="scrypt N=1073741824"):
        sshkeys.load(_pkcs8_encrypted(kdf), passphrase=b"pass", comment="x")


def test_an_ordinary_encrypted_pkcs8_key_is_decrypted():
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pass"))
    assert sshkeys.load(pem, passphrase=b"pass", comment="x").type == "ecdsa-p256"


def test_huge_rsa_keys_are_refused_from_their_framing():
    n = (1 << 9000) | 1
    pkcs1 = _der(0x30, _der_int(0) + _der_int(n) + _der_int(65537) + _der_int(12345))
    with pytest.raises(InvalidKey, match="9001 bits; at most 8192"):
        sshkeys.load(_pem("RSA PRIVATE KEY", pkcs1), comment="x")
    rsa_alg = _der(0x30, _der_oid("1.2.840.113549.1.1.1") + b"\x05\x00")
    pkcs8 = _der(0x30, _der_int(0) + rsa_alg + _der(0x04, pkcs1))
    with pytest.raises(InvalidKey, match="9001 bits; at most 8192"):
        sshkeys.load(_pem("PRIVATE KEY", pkcs8), comment="x")
    # OpenSSH: the public key in the unencrypted envelope says how big the key is.
    n_bytes = n.to_bytes(9001 // 8 + 2, "big")
    public = _ssh_string(b"ssh-rsa") + _ssh_string(b"\x01\x00\x01") + _ssh_string(n_bytes)
    body = (b"openssh-key-v1\x00" + _ssh_string(b"aes256-ctr") + _ssh_string(b"bcrypt")
            + _ssh_string(_ssh_string(b"s" * 16) + (16).to_bytes(4, "big")) + (1).to_bytes(4, "big")
            + _ssh_string(public) + _ssh_string(b"\x00" * 64))
    encoded = _b64.b64encode(body)
    pem = b"\n".join([b"-----BEGIN OPENSSH PRIVATE KEY-----", encoded, b"-----END OPENSSH PRIVATE KEY-----"])
    with pytest.raises(InvalidKey, match="9001 bits; at most 8192"):
        sshkeys.load(pem, passphrase=b"pass", comment="x")


def test_oversized_key_input_is_refused():
    with pytest.raises(InvalidKey, match="at most 16384"):
        sshkeys.load(b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + b"A" * 20000, comment="x")
