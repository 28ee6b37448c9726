"""Secret hygiene: find secret values where they must never be (logs, Events, status, annotations).

The e2e suite feeds this scanner every secret value that existed during the run (the data of the Secrets
the operator wrote and of the Secrets the tests created) and every text that must stay free of them (the
operator's log files, Events, the status and metadata of our custom resources). Any value found fails the
session. Pure code, no I/O: the e2e conftest does the collecting, unit tests plant values to prove it finds
them.

What counts as found, for a value V of a Secret entry:
- V itself (surrounding whitespace stripped), if at least MIN_VALUE_CHARS long;
- base64(V), which is how Secret data travels in the API;
- any single line of V longer than MIN_LINE_CHARS (a PEM key leaks line by line, e.g. when something
  prints the first 256 characters of it), except PEM armour lines ("-----BEGIN ...") which are public.

Entries named in PUBLIC_SECRET_KEYS hold public values by design (a public key, known_hosts, the ssh
command line) that the operator legitimately shows in status; they are not secret and are skipped. New
kinds of Secret entries are secret unless added there: forgetting to list one gives a loud false positive,
never a silent miss.

Key files also share boilerplate: the first base64 line of every unencrypted ed25519 OpenSSH key is the
same (format magic, cipher "none", key type). A line that occurs in two different secret values is
structure, not secret, and is not counted either.

A private key file also carries its public key (OpenSSH repeats the public blob, RSA the modulus), so a
whole line of it can, by base64 alignment, be a piece of the public key that status.sshPublicKey rightly
shows. Lines found inside a known public text (public entries, the public half of every private key that
parses, public keys the collector registers) are therefore not counted as leaks.

Reports name where a value came from and where it was found, with a digest; never the value.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from workspace_secrets.api.constants import PUBLIC_CREDENTIAL_FIELDS
from workspace_secrets.user_keys import sshkeys

#: Entries of a Secret that are public by design (see the module docstring).
PUBLIC_SECRET_KEYS: Final = frozenset({
    "ssh-publickey", "known_hosts", "GIT_SSH_COMMAND",
    # UserToken Secrets: metadata shown in status too (expiry time, token type, login name, Vault address).
    "expires-at", "token-type", "git-username", "vault-addr",
    # Workspace Secrets with user tokens: the env that names files and addresses, and gh's fixed config.yml.
    "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0", "GH_CONFIG_DIR", "GLAB_CONFIG_DIR", "VAULT_ADDR",
    "tool.gh.config.yml",
})


def is_public_key(key: str) -> bool:
    """Public by design: the entries above, and credential identifiers ("aws.AWS_ACCESS_KEY_ID")."""
    return key in PUBLIC_SECRET_KEYS or (
        "." in key and not key.startswith("user.") and key.rsplit(".", 1)[1] in PUBLIC_CREDENTIAL_FIELDS
    ) or (key.startswith("token.") and key.rsplit(".", 1)[1] in ("expires-at", "token-type", "git-username"))
#: Shorter values are too likely to occur by chance ("true", a user name) to be searched for.
MIN_VALUE_CHARS: Final = 12
#: Lines of multi-line values must be longer than this to be searched for on their own.
MIN_LINE_CHARS: Final = 20


@dataclass(frozen=True)
class Needle:
    """One form of one secret value to search for. `text` is never part of the repr."""

    origin: str  # e.g. "Secret wso-e2e-1234/alice-ws[ssh-privatekey]"
    form: str  # "value", "base64", "line 3"
    text: str = field(repr=False)
    value_digest: str = field(default="", repr=False)  # of the whole value this needle comes from

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Leak:
    needle: Needle
    place: str  # e.g. "operator log /tmp/.../operator.log line 1234"

    def __str__(self) -> str:
        return f"{self.needle.form} of {self.needle.origin} ({self.needle.digest}) found in {self.place}"


def needles_for_value(origin: str, value: bytes) -> list[Needle]:
    """Every searchable form of one secret value."""
    needles: list[Needle] = []
    whole = hashlib.sha256(value).hexdigest()
    encoded = base64.b64encode(value).decode()
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = ""  # binary: only its base64 form can appear in text
    stripped = text.strip()
    if len(stripped) >= MIN_VALUE_CHARS:
        needles.append(Needle(origin, "value", stripped, whole))
    if len(stripped) >= MIN_VALUE_CHARS or (not text and len(value) >= MIN_VALUE_CHARS):
        needles.append(Needle(origin, "base64", encoded, whole))
    lines = [line.strip() for line in text.splitlines()]
    if len(lines) > 1:
        for number, line in enumerate(lines, start=1):
            if len(line) > MIN_LINE_CHARS and not line.startswith("-----"):
                needles.append(Needle(origin, f"line {number}", line, whole))
    return needles


def needles_for_secret(namespace: str, name: str, data: Mapping[str, bytes]) -> list[Needle]:
    """The needles of every secret entry of one Secret (public entries skipped)."""
    needles: list[Needle] = []
    for key, value in sorted(data.items()):
        if not is_public_key(key):
            needles.extend(needles_for_value(f"Secret {namespace}/{name}[{key}]", value))
    return needles


def public_texts_for_secret(data: Mapping[str, bytes]) -> list[str]:
    """Public values in a Secret: its public entries, and the public key of every private key in it."""
    texts: list[str] = []
    for key, value in data.items():
        if is_public_key(key):
            texts.append(value.decode("utf-8", "replace"))
        elif b"PRIVATE KEY-----" in value:
            try:
                texts.append(sshkeys.load(value, comment="").public_openssh)
            except sshkeys.InvalidKey:
                pass  # encrypted or broken: its public key, if shown anywhere, is registered otherwise
    return texts


def flatten_strings(obj: Any) -> str:
    """All strings in a JSON-like object, one per line, unescaped, so a multi-line value stored in an
    annotation matches as it would in a log. Strings that hold JSON themselves (kopf's
    last-handled-configuration and progress annotations) are flattened recursively as well."""
    return "\n".join(_strings(obj))


def _strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _strings(item)
    elif isinstance(obj, str):
        yield obj
        if obj[:1] in ("{", "["):
            try:
                inner = json.loads(obj)
            except ValueError:
                return
            yield from _strings(inner)
    elif obj is not None:
        yield str(obj)


class SecretHygiene:
    """Accumulates needles (secret values) and haystacks (texts that must not contain them)."""

    def __init__(self) -> None:
        self._needles: dict[str, Needle] = {}  # by text: the first origin of a value is reported
        self._haystacks: dict[str, str] = {}
        self._public: set[str] = set()
        self._values_of_line: dict[str, set[str]] = {}  # line text -> digests of the values containing it

    @property
    def needle_count(self) -> int:
        return len(self._needles)

    @property
    def haystack_count(self) -> int:
        return len(self._haystacks)

    def add_needles(self, needles: Iterable[Needle]) -> None:
        for needle in needles:
            self._needles.setdefault(needle.text, needle)
            if needle.form.startswith("line "):
                self._values_of_line.setdefault(needle.text, set()).add(needle.value_digest)

    def add_secret(self, namespace: str, name: str, data: Mapping[str, bytes]) -> None:
        self.add_needles(needles_for_secret(namespace, name, data))
        self._public.update(public_texts_for_secret(data))

    def add_public(self, text: str) -> None:
        """A text known to be public (e.g. a status.sshPublicKey): a key line inside it is no leak."""
        self._public.add(text)

    def _is_public(self, needle: Needle) -> bool:
        if not needle.form.startswith("line "):
            return False
        shared = len(self._values_of_line.get(needle.text, ())) > 1  # boilerplate of a format
        return shared or any(needle.text in text for text in self._public)

    def add_haystack(self, place: str, text: str) -> None:
        """Add (or replace: a later snapshot of the same object supersedes an earlier one) a text."""
        self._haystacks[place] = text

    def add_object(self, place: str, obj: Any) -> None:
        self.add_haystack(place, flatten_strings(obj))

    def find_leaks(self, extra: Mapping[str, str] | None = None) -> list[Leak]:
        """Every (needle, place) where a secret value occurs; `extra` are further haystacks (log files)."""
        leaks: list[Leak] = []
        haystacks = {**self._haystacks, **(extra or {})}
        needles = [needle for needle in self._needles.values() if not self._is_public(needle)]
        for place, text in haystacks.items():
            for needle in needles:
                index = text.find(needle.text)
                if index >= 0:
                    line = text.count("\n", 0, index) + 1
                    leaks.append(Leak(needle, f"{place} (line {line})"))
        return leaks


def report(leaks: list[Leak], *, limit: int = 50) -> str:
    """A failure message listing leaks without their values."""
    lines = [f"{len(leaks)} secret value(s) found outside Secret data:"]
    lines += [f"  - {leak}" for leak in leaks[:limit]]
    if len(leaks) > limit:
        lines.append(f"  ... and {len(leaks) - limit} more")
    return "\n".join(lines)
