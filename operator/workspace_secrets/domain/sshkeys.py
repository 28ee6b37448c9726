"""SSH key pairs: generate, load a user's own, and describe them the way OpenSSH does."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .sensitive import Sensitive


class KeyType(str, Enum):
    ED25519 = "ed25519"
    ECDSA = "ecdsa"
    RSA = "rsa"


GENERATED_RSA_BITS = (3072, 4096)
MIN_BROUGHT_RSA_BITS = 2048


@dataclass(frozen=True)
class KeySpec:
    """Which key to generate. `bits` matters for RSA only."""

    type: KeyType = KeyType.ED25519
    bits: int | None = None

    @property
    def slug(self) -> str:
        """Short stable label for names: ed25519, ecdsa-p256, rsa-3072."""
        if self.type is KeyType.RSA:
            return f"rsa-{self.bits}"
        if self.type is KeyType.ECDSA:
            return "ecdsa-p256"
        return "ed25519"


@dataclass(frozen=True)
class SSHKeyPair:
    private_openssh: Sensitive  # unencrypted OpenSSH private key (PEM armour), what `ssh -i` reads
    public_openssh: str  # "ssh-ed25519 AAAA... comment"
    fingerprint: str  # "SHA256:..." as `ssh-keygen -l` prints it
    type: str  # "ed25519", "ecdsa-p256", "rsa-3072", ...

    def __repr__(self) -> str:  # the dataclass repr would be safe too, but be explicit
        return f"SSHKeyPair(type={self.type!r}, fingerprint={self.fingerprint!r})"


class InvalidKey(ValueError):
    """A brought key is unusable. The message explains why and never contains key material."""


def generate(spec: KeySpec, *, comment: str) -> SSHKeyPair:
    if spec.type is KeyType.ED25519:
        key = ed25519.Ed25519PrivateKey.generate()
    elif spec.type is KeyType.ECDSA:
        key = ec.generate_private_key(ec.SECP256R1())
    elif spec.type is KeyType.RSA:
        if spec.bits not in GENERATED_RSA_BITS:
            raise ValueError(f"rsa keys are generated with {GENERATED_RSA_BITS} bits, not {spec.bits}")
        key = rsa.generate_private_key(public_exponent=65537, key_size=spec.bits)
    else:  # pragma: no cover - the enum is closed
        raise ValueError(spec.type)
    return _describe(key, comment)


def load(private_key: bytes, *, passphrase: bytes | None = None, comment: str) -> SSHKeyPair:
    """Validate a user's own key (OpenSSH or PEM/PKCS#8) and normalize it to an unencrypted OpenSSH key.

    The workspace must use it non-interactively, so an encrypted key is decrypted here with the supplied
    passphrase; the passphrase itself is never stored in the workspace Secret.
    """
    key = _parse(private_key, passphrase)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_BROUGHT_RSA_BITS:
        raise InvalidKey(f"RSA key has {key.key_size} bits; at least {MIN_BROUGHT_RSA_BITS} are required")
    if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(
        key.curve, (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
    ):
        raise InvalidKey(f"ECDSA curve {key.curve.name} is not supported by OpenSSH; use nistp256/384/521")
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise InvalidKey(f"unsupported key algorithm {type(key).__name__}; use ed25519, ecdsa or rsa")
    return _describe(key, comment)


def _parse(data: bytes, passphrase: bytes | None):
    text = data.strip()
    if not text:
        raise InvalidKey("the key is empty")
    is_openssh = text.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    is_pem = text.startswith(b"-----BEGIN ") and not is_openssh
    if not (is_openssh or is_pem):
        raise InvalidKey("not a private key: expected an OpenSSH ('BEGIN OPENSSH PRIVATE KEY') or PEM key")
    loader = serialization.load_ssh_private_key if is_openssh else serialization.load_pem_private_key
    try:
        return loader(text + b"\n", password=passphrase or None)
    except TypeError:
        # cryptography raises TypeError for "password given but key not encrypted" and the reverse.
        if passphrase:
            raise InvalidKey("a passphrase was supplied but the key is not encrypted") from None
        raise InvalidKey("the key is passphrase-protected; supply passphraseKey in existingSecretRef") from None
    except Exception:  # never chain: a parser's exception text could quote key bytes
        if passphrase:
            raise InvalidKey("the passphrase does not decrypt the key (or the key is corrupt)") from None
        raise InvalidKey("the key could not be parsed (corrupt or unsupported format)") from None


def _describe(key, comment: str) -> SSHKeyPair:
    private = canonical_openssh(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = public.decode()
    return SSHKeyPair(
        private_openssh=Sensitive(private),
        public_openssh=f"{public_line} {comment}".strip(),
        fingerprint=fingerprint(public_line),
        type=_type_slug(key),
    )


_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_BEGIN, _END = b"-----BEGIN OPENSSH PRIVATE KEY-----", b"-----END OPENSSH PRIVATE KEY-----"


def canonical_openssh(pem: bytes) -> bytes:
    """Make an unencrypted OpenSSH private key's bytes a function of the key alone.

    The format starts its private section with two equal random "check" integers (they only detect a
    wrong passphrase). cryptography picks new ones on every serialization, so the same key would look
    like a changed Secret on every reconcile. For an unencrypted key we derive them from the public key.
    """
    body = base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))
    if not body.startswith(_OPENSSH_MAGIC):
        raise ValueError("not an OpenSSH private key")
    offset = len(_OPENSSH_MAGIC)
    fields = []
    for _ in range(3):  # ciphername, kdfname, kdfoptions
        length = int.from_bytes(body[offset : offset + 4], "big")
        fields.append(body[offset + 4 : offset + 4 + length])
        offset += 4 + length
    if fields[0] != b"none":
        raise ValueError("only unencrypted keys are canonicalized")
    offset += 4  # number of keys (always 1)
    public_length = int.from_bytes(body[offset : offset + 4], "big")
    public_blob = body[offset + 4 : offset + 4 + public_length]
    offset += 4 + public_length + 4  # skip the public key and the private section's length prefix
    check = hashlib.sha256(public_blob).digest()[:4]
    body = body[:offset] + check + check + body[offset + 8 :]
    encoded = base64.b64encode(body)
    lines = [encoded[i : i + 70] for i in range(0, len(encoded), 70)]
    return b"\n".join([_BEGIN, *lines, _END]) + b"\n"


def fingerprint(public_line: str) -> str:
    """SHA256 fingerprint of an OpenSSH public key line, exactly as `ssh-keygen -l` prints it."""
    blob = base64.b64decode(public_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _type_slug(key) -> str:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"ecdsa-p{key.curve.key_size}"
    return f"rsa-{key.key_size}"
