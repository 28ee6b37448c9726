"""SSH keys: generated and brought keys round-trip through cryptography and through OpenSSH itself."""

import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from workspace_secrets.domain import sshkeys
from workspace_secrets.domain.sensitive import Sensitive
from workspace_secrets.domain.sshkeys import InvalidKey, KeySpec, KeyType

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
