"""What a workspace's command-line tools read to use a provider's token: a provider capability (`workspace_tool`
on the provider class), rendered by the workspace Secret's token part (workspace_secret/tokens.py).

Each tool gets its own directory (a file name inside it -> the file's content) and the env vars that point the
tool at it, so its files follow refreshes in place (kubelet updates a mounted Secret's files; env vars are
fixed when a container starts, so they only ever name a directory or a fixed address, never a token):

- GitHub CLI (`gh`): `GH_CONFIG_DIR` with `hosts.yml` (one entry per host: `oauth_token`, `user`,
  `git_protocol: https`, and the same token under `users.<login>`, the multi-account layout gh 2.40+ writes) and
  `config.yml` (`version: "1"`, so gh does not try to migrate a read-only directory).
- GitLab CLI (`glab`): `GLAB_CONFIG_DIR` with `config.yml` (`host`, and per host `token`, `is_oauth2`,
  `api_host`, `api_protocol`, `git_protocol`, `user`, `oauth2_expiry_date` when the token expires).
- Vault: `VAULT_ADDR` (the OAuthApplication's host); the token itself is the file `token.<name>.token`.

Never the refresh token: refreshing is the operator's job, the workspace only ever holds the access token.
Scalars are written as JSON strings, which YAML reads as double-quoted strings (any byte a provider puts in a
token or login stays data, never YAML structure).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

from workspace_secrets.runtime.sensitive import Sensitive


@dataclass(frozen=True)
class ToolAccount:
    """One token as a tool sees it. `token` None: the token is referenced but not usable now (the tool's
    directory and env are still published, so they are there when the user connects)."""

    host: str  # the provider's web URL, e.g. https://github.com
    login: str = ""
    token: Sensitive | None = field(default=None, repr=False)
    expires_at: datetime | None = None


@dataclass(frozen=True)
class ToolConfig:
    files: Mapping[str, bytes] = field(repr=False)  # file name in the tool's directory -> content (holds tokens: never in a repr)
    env: Mapping[str, str]  # env var -> value (never a token)


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)


def _hostname(url: str) -> str:
    return urlsplit(url).netloc or url


class Tool:
    """A command-line tool's configuration directory. `name` names the directory (and the Secret keys)."""

    name = ""
    dir_env: str | None = None  # the env var naming the directory, if the tool reads one

    def render(self, accounts: Sequence[ToolAccount], directory: str) -> ToolConfig:
        raise NotImplementedError


class GitHubCLI(Tool):
    name = "gh"
    dir_env = "GH_CONFIG_DIR"

    def render(self, accounts: Sequence[ToolAccount], directory: str) -> ToolConfig:
        lines: list[str] = []
        seen: set[str] = set()
        for account in accounts:
            host = _hostname(account.host)
            if account.token is None or host in seen:
                continue  # the first usable token of a host wins, as in git-credentials
            seen.add(host)
            token = _q(account.token.reveal_text())
            lines += [f"{_q(host)}:", '    "git_protocol": "https"', f'    "oauth_token": {token}']
            if account.login:
                lines += [f'    "user": {_q(account.login)}', '    "users":', f"        {_q(account.login)}:",
                          f'            "oauth_token": {token}']
        hosts = ("\n".join(lines) + "\n") if lines else "{}\n"
        return ToolConfig(files={"config.yml": b'"version": "1"\n', "hosts.yml": hosts.encode()},
                          env={"GH_CONFIG_DIR": directory})


class GitLabCLI(Tool):
    name = "glab"
    dir_env = "GLAB_CONFIG_DIR"

    def render(self, accounts: Sequence[ToolAccount], directory: str) -> ToolConfig:
        lines: list[str] = []
        seen: set[str] = set()
        default = ""
        for account in accounts:
            host = _hostname(account.host)
            if account.token is None or host in seen:
                continue
            seen.add(host)
            default = default or host
            scheme = urlsplit(account.host).scheme or "https"
            lines += [f"    {_q(host)}:", f'        "api_host": {_q(host)}', f'        "api_protocol": {_q(scheme)}',
                      '        "git_protocol": "https"', '        "is_oauth2": "true"',
                      f'        "token": {_q(account.token.reveal_text())}']
            if account.login:
                lines.append(f'        "user": {_q(account.login)}')
            if account.expires_at is not None:  # glab's own format (RFC 822, UTC)
                lines.append(f'        "oauth2_expiry_date": {_q(account.expires_at.astimezone(timezone.utc).strftime("%d %b %y %H:%M UTC"))}')
        text = (f'"host": {_q(default)}\n"hosts":\n' + "\n".join(lines) + "\n") if lines else '"hosts": {}\n'
        return ToolConfig(files={"config.yml": text.encode()}, env={"GLAB_CONFIG_DIR": directory})


class VaultCLI(Tool):
    name = "vault"
    dir_env = None

    def render(self, accounts: Sequence[ToolAccount], directory: str) -> ToolConfig:
        # VAULT_ADDR is the application's host, known whether or not the token is connected (env is fixed at start).
        return ToolConfig(files={}, env={"VAULT_ADDR": accounts[0].host} if accounts else {})


GH = GitHubCLI()
GLAB = GitLabCLI()
VAULT = VaultCLI()
