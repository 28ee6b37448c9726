"""User secrets: a user's own Secrets (labelled with their name) delivered into every workspace of theirs.

A user declares, per Secret, which keys become env vars and which become files:

    metadata:
      labels:
        workspace-secrets.io/user: alice
      annotations:
        workspace-secrets.io/env: "NPM_TOKEN=token, OPENAI_API_KEY=openai"       # ENV_NAME=key
        workspace-secrets.io/files: ".npmrc=npmrc, .config/gh/hosts.yml=gh:0600"  # path=key[:mode]

Only declared keys are delivered. They land in the workspace Secret under "user.<secret>.<key>", so they
can never clash with the operator's own keys; env names and file paths that two declarations (or the
platform) both claim are reported and delivered to nobody -- never silently overwritten.

What a user secret may be and do is bounded (issue 14, instances 5 and 6):
- only Secrets of the types in USER_SECRET_TYPES: a `kubernetes.io/service-account-token` Secret, filled in
  by Kubernetes with a ServiceAccount's token, is never "a user's secret";
- no env var that changes how programs run (DENIED_ENV_*: the dynamic loader, shells, interpreters, git,
  ssh, proxies, CA bundles...): a value there is code execution or interception, not configuration;
- files stay inside their own mount (relative paths, no "..").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from workspace_secrets.api import constants as c

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SAFE_PATH = re.compile(r"^[A-Za-z0-9_.][-A-Za-z0-9_./]*$")
KEY_PREFIX = "user."
#: The directory (relative to the user files directory) where the operator puts the tools' files of the user tokens
#: (workspace_secret/tokens.py): a user secret may not declare a file under it.
TOKEN_TOOLS_DIR = ".workspace-tokens"

#: Secret types a user secret may have. Others (service-account tokens, bootstrap tokens, Helm releases...)
#: are filled in or owned by someone else: reported, never delivered.
USER_SECRET_TYPES = frozenset({
    "Opaque",
    "kubernetes.io/basic-auth",
    "kubernetes.io/ssh-auth",
    "kubernetes.io/dockerconfigjson",
    "kubernetes.io/tls",
})

#: Env var names a user secret may not set, because their value changes how programs in the workspace run
#: (what they load, execute, trust or where they connect), not what they read. Compared case-insensitively
#: (zsh ties `path` to PATH; curl reads `http_proxy`). Deliver such a value as a file instead.
DENIED_ENV_NAMES = frozenset({
    # shells
    "BASH_ENV", "ENV", "PROMPT_COMMAND", "SHELLOPTS", "BASHOPTS", "PS0", "PS1", "PS2", "PS3", "PS4", "IFS",
    "PATH", "HOME", "SHELL", "CDPATH", "FPATH", "ZDOTDIR", "INPUTRC",
    # interpreters and runtimes
    "PERLLIB", "NODE_OPTIONS", "NODE_PATH", "NODE_EXTRA_CA_CERTS", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS", "CLASSPATH",
    # libc
    "GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RESOLV_HOST_CONF", "TMPDIR",
    # programs other programs start
    "LESSOPEN", "LESSCLOSE", "PAGER", "MANPAGER", "EDITOR", "VISUAL", "BROWSER",
    # trust and transport
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "OPENSSL_CONF", "OPENSSL_ENGINES", "SSLKEYLOGFILE",
    # tools' own configuration homes
    "GNUPGHOME", "KUBECONFIG",
})
DENIED_ENV_PREFIXES = (
    "LD_", "DYLD_", "GLIBC_", "MALLOC_", "BASH_", "GIT_", "SSH_", "PYTHON", "PERL5", "RUBY", "GEM_",
    "NPM_CONFIG_", "SSL_CERT_", "XDG_", "KRB5",
)
DENIED_ENV_SUFFIXES = ("_PROXY",)  # HTTP_PROXY, https_proxy, ALL_PROXY, NO_PROXY...


def denied_env(name: str) -> bool:
    """Whether a user secret may not set env var `name` (see DENIED_ENV_NAMES)."""
    upper = name.upper()
    return upper in DENIED_ENV_NAMES or upper.startswith(DENIED_ENV_PREFIXES) or upper.endswith(DENIED_ENV_SUFFIXES)


@dataclass(frozen=True)
class Declaration:
    secret: str
    key: str
    target: str  # env name or relative file path
    mode: int | None = None


@dataclass
class UserSecretsPlan:
    data: dict[str, str] = field(default_factory=dict)  # workspace Secret key -> base64 value
    env: list[dict[str, str]] = field(default_factory=list)  # [{name, key}]
    files: list[dict[str, Any]] = field(default_factory=list)  # [{key, path, mode?}]
    delivered: list[str] = field(default_factory=list)  # names of the user Secrets delivered
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def workspace_key(secret: str, key: str) -> str:
    return f"{KEY_PREFIX}{secret}.{key}"


def parse_declarations(secret: Mapping[str, Any]) -> tuple[list[Declaration], list[Declaration], list[str]]:
    """(env declarations, file declarations, problems) of one labelled Secret."""
    meta = secret.get("metadata") or {}
    name = meta.get("name", "")
    annotations = meta.get("annotations") or {}
    data = secret.get("data") or {}
    envs, files, problems = [], [], []
    for item in _items(annotations.get(c.ANNOTATION_USER_ENV)):
        target, _, key = item.partition("=")
        target, key = target.strip(), key.strip()
        if not ENV_NAME.match(target) or not key:
            problems.append(f"Secret {name!r}: {c.ANNOTATION_USER_ENV} entry {item!r} is not ENV_NAME=key")
        elif key not in data:
            problems.append(f"Secret {name!r}: {c.ANNOTATION_USER_ENV} names key {key!r}, which the Secret does not have")
        else:
            envs.append(Declaration(name, key, target))
    for item in _items(annotations.get(c.ANNOTATION_USER_FILES)):
        path, _, rest = item.partition("=")
        key, _, mode_text = rest.partition(":")
        path, key, mode_text = path.strip(), key.strip(), mode_text.strip()
        mode = None
        if mode_text:
            try:
                mode = int(mode_text, 8)
            except ValueError:
                mode = -1
        if not SAFE_PATH.match(path) or ".." in path.split("/") or not key or mode == -1 or (mode is not None and not 0 <= mode <= 0o777):
            problems.append(f"Secret {name!r}: {c.ANNOTATION_USER_FILES} entry {item!r} is not relative/path=key[:octal mode]")
        elif key not in data:
            problems.append(f"Secret {name!r}: {c.ANNOTATION_USER_FILES} names key {key!r}, which the Secret does not have")
        else:
            files.append(Declaration(name, key, path, mode))
    return envs, files, problems


def plan(
    secrets: Iterable[Mapping[str, Any]],
    *,
    user: str,
    select: Iterable[str] | None,
    reserved_env: Iterable[str],
) -> UserSecretsPlan:
    """Merge the user's Secrets into what the workspace Secret and the pod injection need."""
    out = UserSecretsPlan()
    wanted = set(select) if select is not None else None
    labelled = sorted(
        (s for s in secrets
         if (s.get("metadata") or {}).get("labels", {}).get(c.LABEL_USER) == user  # tenant isolation, again
         and (wanted is None or s["metadata"]["name"] in wanted)),
        key=lambda s: s["metadata"]["name"],
    )
    if wanted:
        missing = sorted(wanted - {s["metadata"]["name"] for s in labelled})
        out.problems += [f"spec.userSecrets.names: no Secret {n!r} labelled for user {user!r}" for n in missing]
    chosen = []
    for secret in labelled:
        type_ = secret.get("type") or "Opaque"
        if type_ in USER_SECRET_TYPES:
            chosen.append(secret)
        else:
            out.problems.append(
                f"Secret {secret['metadata']['name']!r} has type {type_}; a user secret must be one of "
                f"{', '.join(sorted(USER_SECRET_TYPES))}, so it is not delivered"
            )

    all_env: dict[str, list[Declaration]] = {}
    all_files: dict[str, list[Declaration]] = {}
    by_name = {}
    for secret in chosen:
        by_name[secret["metadata"]["name"]] = secret
        envs, files, problems = parse_declarations(secret)
        out.problems += problems
        for d in envs:
            all_env.setdefault(d.target, []).append(d)
        for d in files:
            all_files.setdefault(d.target, []).append(d)

    reserved = set(reserved_env)
    delivered = set()
    for env_name, claims in sorted(all_env.items()):
        if env_name in reserved:
            out.problems.append(f"env {env_name} is set by the platform; Secret {claims[0].secret!r} cannot override it")
            continue
        if denied_env(env_name):
            out.problems.append(
                f"env {env_name} (Secret {claims[0].secret!r}) changes how programs in the workspace run, so a user "
                f"secret may not set it; deliver the value as a file ({c.ANNOTATION_USER_FILES}) instead"
            )
            continue
        if len(claims) > 1:
            out.problems.append(f"env {env_name} is claimed by several Secrets ({', '.join(d.secret for d in claims)}); none is delivered")
            continue
        d = claims[0]
        key = workspace_key(d.secret, d.key)
        out.data[key] = by_name[d.secret]["data"][d.key]
        out.env.append({"name": env_name, "key": key})
        delivered.add(d.secret)
    for path, claims in sorted(all_files.items()):
        if path.split("/", 1)[0] == TOKEN_TOOLS_DIR:
            out.problems.append(f"file {path} (Secret {claims[0].secret!r}) is under {TOKEN_TOOLS_DIR}/, where the operator puts the user tokens' tool files; choose another path")
            continue
        if len(claims) > 1:
            out.problems.append(f"file {path} is claimed by several Secrets ({', '.join(d.secret for d in claims)}); none is delivered")
            continue
        d = claims[0]
        key = workspace_key(d.secret, d.key)
        out.data[key] = by_name[d.secret]["data"][d.key]
        out.files.append({"key": key, "path": path, **({"mode": d.mode} if d.mode is not None else {})})
        delivered.add(d.secret)
    out.delivered = sorted(delivered)
    return out


def _items(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]
