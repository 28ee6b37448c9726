"""SSH key pairs: generate, load a user's own, and describe them the way OpenSSH does."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from enum import Enum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from workspace_secrets.runtime.sensitive import Sensitive


class KeyType(str, Enum):
    ED25519 = "ed25519"
    ECDSA = "ecdsa"
    RSA = "rsa"


GENERATED_RSA_BITS = (3072, 4096)
MIN_BROUGHT_RSA_BITS = 2048

# Bounds on a brought key, checked BEFORE any decryption or key parsing, so one tenant's key costs a bounded
# amount of CPU (issue 14, instance 7: a key whose KDF rounds said 20,000 kept the operator busy for minutes).
MAX_BROUGHT_KEY_BYTES = 16 * 1024  # an RSA-8192 OpenSSH key is about 6.5 KiB
MAX_BROUGHT_RSA_BITS = 8192
MAX_BCRYPT_ROUNDS = 64  # OpenSSH's bcrypt KDF; ssh-keygen writes 16 by default (-a N to change)
MAX_PBKDF2_ITERATIONS = 600_000  # PKCS#8 PBES2/PBKDF2 (OWASP's 2023 figure for SHA-256); OpenSSL writes 2,048
MAX_SCRYPT_COST = 2**15  # PKCS#8 scrypt N (memory 128 * N * r bytes: 32 MiB at r=8); OpenSSL writes 2**14
MAX_SCRYPT_BLOCK_SIZE = 8
MAX_SCRYPT_PARALLELISM = 1
MAX_PBES1_ITERATIONS = 600_000  # legacy PKCS#5 v1.5 / PKCS#12 PBE


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
    passphrase; the passphrase itself is never stored in the workspace Secret. The work is bounded first
    (`check_work_bounds`: size, KDF rounds/iterations, RSA size), yet it is CPU work: callers on an event
    loop run it in a worker thread.
    """
    key = _parse(private_key, passphrase)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_BROUGHT_RSA_BITS:
        raise InvalidKey(f"RSA key has {key.key_size} bits; at least {MIN_BROUGHT_RSA_BITS} are required")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size > MAX_BROUGHT_RSA_BITS:
        raise InvalidKey(f"RSA key has {key.key_size} bits; at most {MAX_BROUGHT_RSA_BITS} are accepted")
    if isinstance(key, ec.EllipticCurvePrivateKey) and not isinstance(
        key.curve, (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
    ):
        raise InvalidKey(f"ECDSA curve {key.curve.name} is not supported by OpenSSH; use nistp256/384/521")
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise InvalidKey(f"unsupported key algorithm {type(key).__name__}; use ed25519, ecdsa or rsa")
    return _describe(key, comment)


def _parse(data: bytes, passphrase: bytes | None):
    if len(data) > MAX_BROUGHT_KEY_BYTES:
        raise InvalidKey(f"the key is {len(data)} bytes; at most {MAX_BROUGHT_KEY_BYTES} are accepted (an RSA-8192 key is about 6.5 KiB)")
    text = data.strip()
    if not text:
        raise InvalidKey("the key is empty")
    is_openssh = text.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    is_pem = text.startswith(b"-----BEGIN ") and not is_openssh
    if not (is_openssh or is_pem):
        raise InvalidKey("not a private key: expected an OpenSSH ('BEGIN OPENSSH PRIVATE KEY') or PEM key")
    if passphrase is not None and len(passphrase) > 1024:
        raise InvalidKey("the passphrase is longer than 1024 bytes")
    check_work_bounds(text)
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


# --- bounding the work before doing it -----------------------------------------------------------------
def check_work_bounds(text: bytes) -> None:
    """Refuse a key whose decryption or parsing would cost more than a bounded amount of CPU.

    Reads only the unencrypted framing: OpenSSH's envelope (cipher, KDF and its rounds, the public key) or a
    PEM's ASN.1 (PKCS#8 encryption parameters, or an unencrypted key's RSA modulus). Raises InvalidKey."""
    if text.startswith(_BEGIN):
        _check_openssh(_pem_body(text))
        return
    label = text.split(b"\n", 1)[0].strip()
    if b"ENCRYPTED" in text.split(b"\n\n", 1)[0] and b"Proc-Type:" in text:
        # Legacy OpenSSL PEM encryption (Proc-Type: 4,ENCRYPTED): the key is derived with one MD5 round.
        return
    der = _pem_body(text)
    if label == b"-----BEGIN ENCRYPTED PRIVATE KEY-----":
        _check_pkcs8_encryption(der)
    elif label == b"-----BEGIN RSA PRIVATE KEY-----":
        _check_rsa_modulus(_der_rsa_modulus_pkcs1(der))
    elif label == b"-----BEGIN PRIVATE KEY-----":
        _check_pkcs8_plain(der)


def _pem_body(text: bytes) -> bytes:
    lines = [line.strip() for line in text.strip().splitlines()]
    body = [line for line in lines[1:-1] if line and b":" not in line]
    try:
        return base64.b64decode(b"".join(body), validate=True)
    except ValueError:
        raise InvalidKey("the key could not be parsed (corrupt or unsupported format)") from None


class _Reader:
    """OpenSSH wire format: uint32 lengths, big-endian."""

    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data, self.offset = data, offset

    def uint32(self) -> int:
        if self.offset + 4 > len(self.data):
            raise InvalidKey("the key could not be parsed (truncated OpenSSH envelope)")
        value = int.from_bytes(self.data[self.offset : self.offset + 4], "big")
        self.offset += 4
        return value

    def string(self) -> bytes:
        length = self.uint32()
        if self.offset + length > len(self.data):
            raise InvalidKey("the key could not be parsed (truncated OpenSSH envelope)")
        value = self.data[self.offset : self.offset + length]
        self.offset += length
        return value


def _check_openssh(body: bytes) -> None:
    if not body.startswith(_OPENSSH_MAGIC):
        raise InvalidKey("the key could not be parsed (corrupt or unsupported format)")
    reader = _Reader(body, len(_OPENSSH_MAGIC))
    reader.string()  # cipher name
    kdf_name = reader.string()
    kdf_options = reader.string()
    if kdf_name == b"bcrypt":
        options = _Reader(kdf_options)
        options.string()  # salt
        rounds = options.uint32()
        if rounds > MAX_BCRYPT_ROUNDS:
            raise InvalidKey(
                f"the key's passphrase KDF (bcrypt) asks for {rounds} rounds; at most {MAX_BCRYPT_ROUNDS} are accepted "
                f"(ssh-keygen's default is 16). Re-encrypt it: ssh-keygen -p -a 16 -f KEYFILE"
            )
    elif kdf_name not in (b"none",):
        raise InvalidKey(f"the key's passphrase KDF {kdf_name[:32].decode(errors='replace')!r} is not supported (OpenSSH uses bcrypt)")
    if reader.uint32() != 1:
        raise InvalidKey("the key file must hold exactly one key")
    public = _Reader(reader.string())
    if public.string() == b"ssh-rsa":
        public.string()  # e
        _check_rsa_modulus(public.string())


def _check_rsa_modulus(modulus: bytes) -> None:
    bits = int.from_bytes(modulus, "big").bit_length()
    if bits > MAX_BROUGHT_RSA_BITS:
        raise InvalidKey(f"RSA key has {bits} bits; at most {MAX_BROUGHT_RSA_BITS} are accepted")


# Minimal DER reading: just enough to find encryption parameters and RSA moduli before cryptography parses.
def _der(data: bytes, offset: int = 0) -> tuple[int, bytes, int]:
    """(tag, content, offset after) of the DER element at `offset`."""
    if offset + 2 > len(data):
        raise InvalidKey("the key could not be parsed (truncated ASN.1)")
    tag, first = data[offset], data[offset + 1]
    offset += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or offset + count > len(data):
            raise InvalidKey("the key could not be parsed (bad ASN.1 length)")
        length = int.from_bytes(data[offset : offset + count], "big")
        offset += count
    else:
        length = first
    if offset + length > len(data):
        raise InvalidKey("the key could not be parsed (truncated ASN.1)")
    return tag, data[offset : offset + length], offset + length


def _der_sequence(data: bytes) -> list[tuple[int, bytes]]:
    items, offset = [], 0
    while offset < len(data):
        tag, content, offset = _der(data, offset)
        items.append((tag, content))
    return items


def _der_oid(content: bytes) -> str:
    if not content:
        return ""
    parts = [content[0] // 40, content[0] % 40]
    value = 0
    for byte in content[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    return ".".join(map(str, parts))


def _der_int(item: tuple[int, bytes]) -> int:
    if item[0] != 0x02:
        raise InvalidKey("the key could not be parsed (expected an ASN.1 INTEGER)")
    return int.from_bytes(item[1], "big", signed=True)


_SEQ, _OID, _OCTETS = 0x30, 0x06, 0x04
_PBES2 = "1.2.840.113549.1.5.13"
_PBKDF2 = "1.2.840.113549.1.5.12"
_SCRYPT = "1.3.6.1.4.1.11591.4.11"
_RSA = "1.2.840.113549.1.1.1"


def _algorithm(item: tuple[int, bytes]) -> tuple[str, tuple[int, bytes] | None]:
    if item[0] != _SEQ:
        raise InvalidKey("the key could not be parsed (expected an ASN.1 AlgorithmIdentifier)")
    parts = _der_sequence(item[1])
    if not parts or parts[0][0] != _OID:
        raise InvalidKey("the key could not be parsed (expected an ASN.1 OID)")
    return _der_oid(parts[0][1]), (parts[1] if len(parts) > 1 else None)


def _check_pkcs8_encryption(der: bytes) -> None:
    tag, content, _ = _der(der)
    outer = _der_sequence(content) if tag == _SEQ else []
    if len(outer) != 2:
        raise InvalidKey("the key could not be parsed (not a PKCS#8 EncryptedPrivateKeyInfo)")
    scheme, params = _algorithm(outer[0])
    if scheme == _PBES2:
        if params is None or params[0] != _SEQ:
            raise InvalidKey("the key could not be parsed (PBES2 without parameters)")
        pbes2 = _der_sequence(params[1])
        if not pbes2:
            raise InvalidKey("the key could not be parsed (PBES2 without a KDF)")
        kdf, kdf_params = _algorithm(pbes2[0])
        fields = _der_sequence(kdf_params[1]) if kdf_params is not None and kdf_params[0] == _SEQ else []
        if kdf == _PBKDF2 and len(fields) >= 2:
            iterations = _der_int(fields[1])
            if iterations > MAX_PBKDF2_ITERATIONS:
                raise InvalidKey(
                    f"the key's passphrase KDF (PBKDF2) asks for {iterations} iterations; at most "
                    f"{MAX_PBKDF2_ITERATIONS} are accepted. Re-encrypt it, or convert it: ssh-keygen -p -a 16 -f KEYFILE"
                )
            return
        if kdf == _SCRYPT and len(fields) >= 4:
            cost, block, parallel = (_der_int(f) for f in fields[1:4])
            if cost > MAX_SCRYPT_COST or block > MAX_SCRYPT_BLOCK_SIZE or parallel > MAX_SCRYPT_PARALLELISM:
                raise InvalidKey(
                    f"the key's passphrase KDF (scrypt N={cost}, r={block}, p={parallel}) exceeds the accepted bounds "
                    f"(N<={MAX_SCRYPT_COST}, r<={MAX_SCRYPT_BLOCK_SIZE}, p<={MAX_SCRYPT_PARALLELISM}). Re-encrypt it, or "
                    f"convert it: ssh-keygen -p -a 16 -f KEYFILE"
                )
            return
        raise InvalidKey("the key's PKCS#8 encryption uses an unsupported KDF; use PBKDF2 or scrypt, or an OpenSSH key")
    # PBES1 (PKCS#5 v1.5) and PKCS#12 PBE: parameters are SEQUENCE { salt OCTET STRING, iterations INTEGER }.
    if scheme.startswith(("1.2.840.113549.1.5.", "1.2.840.113549.1.12.1.")) and params is not None and params[0] == _SEQ:
        fields = _der_sequence(params[1])
        if len(fields) >= 2:
            iterations = _der_int(fields[1])
            if iterations > MAX_PBES1_ITERATIONS:
                raise InvalidKey(
                    f"the key's passphrase KDF asks for {iterations} iterations; at most {MAX_PBES1_ITERATIONS} are "
                    f"accepted. Re-encrypt it: ssh-keygen -p -a 16 -f KEYFILE"
                )
            return
    raise InvalidKey("the key's PKCS#8 encryption scheme is not supported; use PBES2 (PBKDF2 or scrypt), or an OpenSSH key")


def _check_pkcs8_plain(der: bytes) -> None:
    tag, content, _ = _der(der)
    fields = _der_sequence(content) if tag == _SEQ else []
    if len(fields) < 3:
        raise InvalidKey("the key could not be parsed (not a PKCS#8 PrivateKeyInfo)")
    algorithm, _params = _algorithm(fields[1])
    if algorithm == _RSA and fields[2][0] == _OCTETS:
        _check_rsa_modulus(_der_rsa_modulus_pkcs1(fields[2][1]))


def _der_rsa_modulus_pkcs1(der: bytes) -> bytes:
    tag, content, _ = _der(der)
    fields = _der_sequence(content) if tag == _SEQ else []
    if len(fields) < 2 or fields[1][0] != 0x02:
        raise InvalidKey("the key could not be parsed (not a PKCS#1 RSAPrivateKey)")
    return fields[1][1]


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


#: A public key line longer than this is no key the operator wrote (an RSA-8192 line is about 1.4 KiB).
MAX_PUBLIC_KEY_LINE = 4096


@dataclass(frozen=True)
class PublicKey:
    """An OpenSSH public key, as providers compare it: `type base64`, without the comment."""

    body: str  # "ssh-ed25519 AAAA..."
    fingerprint: str  # "SHA256:..."
    type: str  # "ed25519", "ecdsa-p256", "rsa-3072", ... (as SSHKeyPair.type)


def public_key(line: str) -> PublicKey:
    """Parse one OpenSSH public key line (ed25519, ECDSA on the OpenSSH curves, RSA). Raises InvalidKey."""
    if len(line) > MAX_PUBLIC_KEY_LINE:
        raise InvalidKey("the public key line is too long")
    parts = line.strip().split()
    if len(parts) < 2:
        raise InvalidKey("not an OpenSSH public key line")
    body = f"{parts[0]} {parts[1]}"
    try:
        key = serialization.load_ssh_public_key(body.encode())
    except Exception:  # never chain: the parser's text could quote the line
        raise InvalidKey("not an OpenSSH public key line") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        type_ = "ed25519"
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)):
        type_ = f"ecdsa-p{key.curve.key_size}"
    elif isinstance(key, rsa.RSAPublicKey):
        type_ = f"rsa-{key.key_size}"
    else:
        raise InvalidKey("unsupported public key type")
    return PublicKey(body=body, fingerprint=fingerprint(body), type=type_)


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
