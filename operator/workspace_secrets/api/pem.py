"""What a CA bundle may hold (pure): an allowlist. Only `-----BEGIN CERTIFICATE-----` blocks, each an X.509
certificate; any other PEM block (a private key of any kind, a PGP key block, a certificate request, OpenSSL's
TRUSTED CERTIFICATE...) is refused, so no secret material can be parked in a bundle that others read (an
OAuthApplication is readable by tenants) or be mistaken for a CA.

- An OAuthApplication's spec.caBundle: certificate blocks with whitespace between, nothing else (the CRD's CEL rule
  says the same).
- The operator's --ca-bundle-file: the same blocks; text outside them is ignored, as OpenSSL ignores it (bundles
  such as certifi's or a distribution's carry `# Issuer: ...` lines), but it may not look like a PEM block.

Messages never quote the text: it may hold a secret pasted by mistake.
"""

from __future__ import annotations

import base64
import binascii
import re
import warnings

ALLOWED_LABELS = frozenset({"CERTIFICATE"})
_BLOCK = re.compile(r"-----BEGIN ([^\r\n]{0,64}?)-----(.*?)-----END ([^\r\n]{0,64}?)-----", re.S)
_WHITESPACE = re.compile(r"[ \t\n\r\f\v]*")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]+")  # after removing whitespace; a certificate block has no headers
SHAPE = "PEM certificates (-----BEGIN CERTIFICATE----- ... -----END CERTIFICATE-----)"


def certificates_problem(text: str, *, text_between: bool = False) -> str | None:
    """Why `text` is not a bundle of PEM CA certificates (None: it is). `text_between`: text outside the blocks is
    allowed (a bundle file), else only whitespace is (spec.caBundle)."""
    from cryptography import x509

    if "PRIVATE KEY" in text:
        return "holds a private key: give only the CA's certificate(s), never a key"
    position = count = 0
    for match in _BLOCK.finditer(text):
        if problem := _outside_problem(text[position:match.start()], text_between):
            return problem
        position = match.end()
        label, body, end_label = match.group(1), match.group(2), match.group(3)
        if label != end_label:
            return f"must be {SHAPE}: a block's BEGIN and END lines differ"
        if label not in ALLOWED_LABELS:
            if "PRIVATE" in label or "SECRET" in label:
                return "holds a private key: give only the CA's certificate(s), never a key"
            if label == "TRUSTED CERTIFICATE":
                return (f"must be {SHAPE}: an OpenSSL TRUSTED CERTIFICATE block is not accepted (convert it with "
                        "`openssl x509 -in ca.pem -out ca.crt`)")
            return f"must be {SHAPE} only: it holds another kind of PEM block"
        compact = "".join(body.split())
        if not _BASE64.fullmatch(compact):
            return f"must be {SHAPE}: a certificate block holds something other than base64"
        try:
            with warnings.catch_warnings():  # e.g. an old root's negative serial number: still a certificate
                warnings.simplefilter("ignore")
                x509.load_der_x509_certificate(base64.b64decode(compact, validate=True))
        except (ValueError, binascii.Error):
            return f"must be {SHAPE}: a CERTIFICATE block is not an X.509 certificate"
        count += 1
    if problem := _outside_problem(text[position:], text_between):
        return problem
    return None if count else f"must be {SHAPE}: it holds no certificate"


def _outside_problem(outside: str, text_between: bool) -> str | None:
    if "-----BEGIN" in outside or "-----END" in outside:
        return f"must be {SHAPE}: a block lacks its END or BEGIN line"
    if not text_between and not _WHITESPACE.fullmatch(outside):
        return f"must be {SHAPE} with only whitespace between them, no other text"
    return None
