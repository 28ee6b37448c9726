"""User tokens in the workspace (spec.userTokens): read the named UserTokens of the WorkspaceSecret's user and their
token Secrets, check whose they are, and compose what goes into the workspace Secret.

Only the ACCESS token reaches a workspace, never the refresh token: refreshing is the operator's job. What the
workspace gets (documented in docs/users/workspacesecret.md, "User tokens"):

- `token.<name>.token` (the access token), `token.<name>.token-type`, `token.<name>.expires-at` (when it
  expires), `token.<name>.git-username` (git providers), all files under spec.mountPath;
- `git-credentials`: every git token in git's credential-store format, and the env vars
  GIT_CONFIG_COUNT=1, GIT_CONFIG_KEY_0=credential.helper, GIT_CONFIG_VALUE_0=a helper that runs
  `git credential-store --file=<mountPath>/git-credentials get` (only `get`: the file is read-only), so git over
  https works with no setup and follows refreshes (the file changes in place, the env does not);
- the provider's command-line tool files (oauth/tools.py: gh, glab, Vault's VAULT_ADDR), each tool's files in
  `<userSecrets.mountPath>/.workspace-tokens/<tool>/` (published in status.files, keys `tool.<tool>.<file>`).

A token is delivered only when all of these hold (checked on every reconcile, from what the API says now):
- the UserToken exists in the WorkspaceSecret's namespace and its spec.user is the WorkspaceSecret's spec.user
  ("does not exist" and "is another user's" are one answer: no existence oracle);
- its OAuthApplication exists and allows the namespace (the same check the UserToken side makes);
- its phase is Valid (or Refreshing) and its token is not past expiresAt;
- its token Secret (the UserToken's spec.secretName) is controller-owned by that UserToken (uid), labelled
  managed-by the operator, component user-token and user <spec.user> -- a Secret of the right name made by
  anyone else is never read from.

A required token (optional: false) that is not delivered makes TokensReady (and Ready) False with the UserToken's
connect link (its status.authorizationURL: the connect page, no credential in it); an optional one never blocks.

`view`, `compose`, `condition` and `announcements` decide (pure); token_reader.py reads (I/O).
"""

from __future__ import annotations

import base64
import dataclasses
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from workspace_secrets.api import conditions as cond
from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Condition, Problem
from workspace_secrets.api.oauth_application import OAuthApplication, unavailable_application
from workspace_secrets.api.user_token import UserToken
from workspace_secrets.api.workspace_secret import SpecError, TokenRef, WorkspaceSecret
from workspace_secrets.oauth.protocol import GitAccess, Identity
from workspace_secrets.oauth.tools import Tool, ToolAccount
from workspace_secrets.oauth import token_secret
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.workspace_secret.user_secrets import TOKEN_TOOLS_DIR

if TYPE_CHECKING:
    from workspace_secrets.oauth.base import OAuthProvider

#: The directory (relative to spec.userSecrets.mountPath) holding the tools' files; reserved: a user secret may not
#: declare a file under it.
TOOLS_DIR = TOKEN_TOOLS_DIR
TOKEN_KEY_PREFIX = "token."
TOOL_KEY_PREFIX = "tool."

#: status.tokens[].phase of a name that is not a UserToken of this user here (one answer for both cases).
PHASE_UNAVAILABLE = "Unavailable"

REASON_UNAVAILABLE = "TokenNotFound"
REASON_NOT_CONNECTED = "TokenNotConnected"
REASON_EXPIRED = "TokenExpired"
REASON_REVOKED = "TokenRevoked"
REASON_ERROR = "TokenError"
REASON_APPLICATION = "TokenApplicationNotAllowed"
REASON_SECRET_NOT_OWNED = "TokenSecretNotOwned"

VALID_PHASES = (c.PHASE_VALID, c.PHASE_REFRESHING)
#: Phases in which the user has to (re)connect: the UserToken's status.authorizationURL is shown.
_CONNECT_PHASES = (c.PHASE_AWAITING_AUTHORIZATION, c.PHASE_EXPIRED, c.PHASE_REVOKED)
_PHASE_REASONS = {c.PHASE_EXPIRED: REASON_EXPIRED, c.PHASE_REVOKED: REASON_REVOKED, c.PHASE_ERROR: REASON_ERROR}


def token_key(name: str, field_name: str) -> str:
    """The workspace Secret key of one field of UserToken `name`: token.<name>.<field>."""
    return f"{TOKEN_KEY_PREFIX}{name}.{field_name}"


def tool_key(tool: str, file_name: str) -> str:
    return f"{TOOL_KEY_PREFIX}{tool}.{file_name}"


# --- one referenced token ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenView:
    """What one spec.userTokens entry resolved to. `access_token` is set only when every check passed."""

    ref: TokenRef
    phase: str  # the UserToken's phase, or Unavailable
    problem: Problem | None = None  # why it is not delivered (None: delivered)
    application: str | None = None
    type: str | None = None
    host: str | None = None  # the provider's web URL (the application's host or the public default)
    login: str | None = None
    connect_url: str | None = None
    access_token: Sensitive | None = field(default=None, repr=False)
    token_type: str = "bearer"
    expires_at: datetime | None = None
    git: GitAccess | None = None
    tool: Tool | None = None

    @property
    def delivered(self) -> bool:
        return self.access_token is not None


def unavailable(ws: WorkspaceSecret, ref: TokenRef) -> TokenView:
    """The one answer for "no such UserToken", "another user's" and "not a UserToken at all"."""
    return TokenView(ref, PHASE_UNAVAILABLE, Problem(
        REASON_UNAVAILABLE,
        f"UserToken {ref.name!r} is not a UserToken of user {ws.user!r} in namespace {ws.namespace!r}: it does not exist "
        f"or belongs to someone else. Create it (spec.user: {ws.user}, spec.application: an application your platform "
        f"offers) and connect it, or remove it from spec.userTokens."))


def is_token_secret_of(secret: Mapping[str, Any] | None, ut: UserToken) -> bool:
    """Whether `secret` is the token Secret the operator wrote for this UserToken (oauth/token_secret.py says how)."""
    return token_secret.is_token_secret_of(secret, ut.uid, ut.user)


def view(ws: WorkspaceSecret, ref: TokenRef, ut_body: Mapping[str, Any] | None, app_body: Mapping[str, Any] | None,
         secret: Mapping[str, Any] | None, *, now: datetime,
         provider_for: Callable[[OAuthApplication], OAuthProvider]) -> TokenView:
    """Decide what one spec.userTokens entry gives the workspace, from the objects as read (None: not found)."""
    spec = (ut_body or {}).get("spec") or {}
    if ut_body is None or spec.get("user") != ws.user or (ut_body.get("metadata") or {}).get("namespace") != ws.namespace:
        return unavailable(ws, ref)
    status = ut_body.get("status") or {}
    phase = str(status.get("phase") or c.PHASE_AWAITING_AUTHORIZATION)
    try:
        ut = UserToken.from_body(ut_body)
    except SpecError as exc:
        return TokenView(ref, phase, Problem(REASON_ERROR, f"UserToken {ref.name!r} has an invalid spec ({exc.field}); see its status."))
    app = None
    if app_body is not None:
        try:
            app = OAuthApplication.from_body(app_body)
        except SpecError:
            app = None
    if app is None or not app.allows(ws.namespace):
        return TokenView(ref, phase, Problem(REASON_APPLICATION, unavailable_application(ut.application, ut.namespace).message), application=ut.application)
    provider = provider_for(app)
    link = status.get("authorizationURL") if isinstance(status.get("authorizationURL"), str) else None
    login = status.get("login") if isinstance(status.get("login"), str) else None
    base = TokenView(ref, phase, None, application=app.name, type=app.type, host=app.display_host or app.host,
                     login=login, connect_url=link if phase in _CONNECT_PHASES else None,
                     tool=getattr(provider, "workspace_tool", None))
    where = f"{app.type}" + (f" at {base.host}" if base.host else "")
    connect = f" Connect it at {base.connect_url}" if base.connect_url else " Connect it on the connect page"
    if ut.deleting:
        return _replace(base, problem=Problem(REASON_NOT_CONNECTED, f"UserToken {ref.name!r} is being deleted."))
    if phase not in VALID_PHASES:
        reason = _PHASE_REASONS.get(phase, REASON_NOT_CONNECTED)
        what = {REASON_EXPIRED: "expired and can no longer be refreshed", REASON_REVOKED: "was revoked at the provider",
                REASON_ERROR: "is in error (see its status)"}.get(reason, "is not connected yet")
        return _replace(base, problem=Problem(reason, f"UserToken {ref.name!r} ({where}) {what}.{connect}."))
    if not is_token_secret_of(secret, ut):
        if secret is None:
            return _replace(base, problem=Problem(REASON_NOT_CONNECTED, f"UserToken {ref.name!r} ({where}) has no token Secret yet; the operator writes it."))
        return _replace(base, problem=Problem(
            REASON_SECRET_NOT_OWNED,
            f"Secret {ut.secret_name!r} is not the token Secret the operator wrote for UserToken {ref.name!r} (not owned by "
            f"it, or not labelled as the operator's); it is not used. Delete that Secret: the UserToken writes its own."))
    stored = token_secret.read_token_secret(secret)  # type: ignore[arg-type]
    if stored is None:
        return _replace(base, problem=Problem(REASON_NOT_CONNECTED, f"UserToken {ref.name!r} ({where}) has no token yet.{connect}."))
    expires = stored.tokens.expires_at
    if expires is not None and expires <= now:
        return _replace(base, problem=Problem(REASON_EXPIRED, f"UserToken {ref.name!r} ({where}) holds an expired token; the operator refreshes it, or it must be reconnected.{connect}."))
    git = provider.git_access(Identity(login=login or "", user_id=""))
    if git is not None and not git.username:
        git = None  # the username is the login (Bitbucket Server) and it is not known yet
    return _replace(base, access_token=stored.tokens.access_token, token_type=stored.tokens.token_type,
                    expires_at=expires, git=git)


def _replace(v: TokenView, **changes: Any) -> TokenView:
    return dataclasses.replace(v, **changes)


# --- the workspace Secret's token part ---------------------------------------------------------------------
@dataclass
class TokensOutcome:
    """What the tokens add to the workspace Secret and its status. `data` is base64, like the Secret's."""

    views: tuple[TokenView, ...] = ()
    data: dict[str, str] = field(default_factory=dict, repr=False)
    env: list[dict[str, str]] = field(default_factory=list)  # status.env entries {name, key}
    files: list[dict[str, Any]] = field(default_factory=list)  # status.files entries {key, path}
    status: list[dict[str, Any]] = field(default_factory=list)  # status.tokens (never a value)
    problems: list[Problem] = field(default_factory=list)  # required tokens not delivered
    notes: list[str] = field(default_factory=list)  # optional tokens not delivered

    @property
    def ready(self) -> bool:
        return not self.problems

    @property
    def env_names(self) -> list[str]:
        return [e["name"] for e in self.env]


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def git_config_env(ws: WorkspaceSecret) -> dict[str, str]:
    """The env that makes git use the combined git-credentials file (git >= 2.31 reads GIT_CONFIG_COUNT)."""
    return {
        c.KEY_GIT_CONFIG_COUNT: "1",
        c.KEY_GIT_CONFIG_KEY_0: "credential.helper",
        c.KEY_GIT_CONFIG_VALUE_0: git_credential_helper(f"{ws.mount_path.rstrip('/')}/{c.KEY_WORKSPACE_GIT_CREDENTIALS}"),
    }


def git_credential_helper(path: str) -> str:
    """A credential helper that only answers `get` from the store file at `path`.

    Plain `store --file=<path>` would also run on `store`/`erase` (git calls them after every authenticated
    request) and, the Secret volume being read-only, print "fatal: unable to get credential storage lock" each
    time. git runs a `!` helper with `sh -c`, appending the action as the argument; the path is shell-quoted
    (spec.mountPath is the tenant's, and may hold a space)."""
    return f'!f() {{ test "$1" = get && exec git credential-store --file={shlex.quote(path)} get; }}; f'


def tools_directory(ws: WorkspaceSecret, tool: Tool) -> str:
    return f"{ws.user_files_path.rstrip('/')}/{TOOLS_DIR}/{tool.name}"


def compose(ws: WorkspaceSecret, views: Sequence[TokenView]) -> TokensOutcome:
    """The keys, env, files and status the referenced tokens give the workspace (pure)."""
    out = TokensOutcome(views=tuple(views))
    if not ws.user_tokens:
        return out
    lines: list[bytes] = []
    env_values: dict[str, str] = dict(git_config_env(ws))
    for v in views:
        if v.delivered:
            assert v.access_token is not None
            name = v.ref.name
            out.data[token_key(name, c.KEY_TOKEN)] = _b64(v.access_token.reveal())
            out.data[token_key(name, c.KEY_TOKEN_TYPE)] = _b64(v.token_type.encode())
            if v.expires_at is not None:
                out.data[token_key(name, c.KEY_EXPIRES_AT)] = _b64(token_secret.format_time(v.expires_at).encode())  # type: ignore[union-attr]
            if v.git is not None:
                out.data[token_key(name, c.KEY_GIT_USERNAME)] = _b64(v.git.username.encode())
                lines.append(token_secret.git_credentials_line(v.git.url, v.git.username, v.access_token.reveal()))
        elif v.problem is not None:
            if v.ref.optional:
                out.notes.append(f"optional {v.problem.message}")
            else:
                out.problems.append(v.problem)
        out.status.append(_status_entry(v))
    out.data[c.KEY_WORKSPACE_GIT_CREDENTIALS] = _b64(b"".join(lines))
    # The tools of the referenced providers (whether their tokens are usable now or not: env and the files'
    # places are fixed when a pod starts; the contents follow).
    tools: dict[str, tuple[Tool, list[ToolAccount]]] = {}
    for v in views:
        if v.tool is not None and v.host:
            tools.setdefault(v.tool.name, (v.tool, []))[1].append(
                ToolAccount(host=v.host, login=v.login or "", token=v.access_token, expires_at=v.expires_at))
    for name, (tool, accounts) in sorted(tools.items()):
        rendered = tool.render(accounts, tools_directory(ws, tool))
        for file_name, content in sorted(rendered.files.items()):
            key = tool_key(name, file_name)
            out.data[key] = _b64(content)
            out.files.append({"key": key, "path": f"{TOOLS_DIR}/{name}/{file_name}"})
        for env_name, value in rendered.env.items():
            env_values.setdefault(env_name, value)
    for env_name, value in env_values.items():
        out.data[env_name] = _b64(value.encode())
        out.env.append({"name": env_name, "key": env_name})
    return out


def _status_entry(v: TokenView) -> dict[str, Any]:
    # Refreshing shows as Valid: a refresh is the operator's business, and the workspace is not reconciled for the
    # phase's Valid -> Refreshing -> Valid (controller.user_token_changed), so a status caught mid-refresh would stay.
    phase = c.PHASE_VALID if v.phase in VALID_PHASES else v.phase
    entry: dict[str, Any] = {"name": v.ref.name, "optional": v.ref.optional, "phase": phase, "delivered": v.delivered}
    for key, value in (("application", v.application), ("type", v.type), ("login", v.login), ("connectURL", v.connect_url),
                       ("reason", v.problem.reason if v.problem else None)):
        if value:
            entry[key] = value
    return entry


def condition(ws: WorkspaceSecret, outcome: TokensOutcome | None) -> Condition:
    if not ws.user_tokens:
        return Condition(c.CONDITION_TOKENS_READY, True, "NoTokens", "No user tokens requested.")
    if outcome is None:
        return Condition(c.CONDITION_TOKENS_READY, False, "Blocked", "User tokens are delivered once the Secret can be written (see Ready).")
    if outcome.problems:
        return Condition(c.CONDITION_TOKENS_READY, False, outcome.problems[0].reason,
                         " ".join(p.message for p in outcome.problems)[:2000])
    delivered = ", ".join(v.ref.name for v in outcome.views if v.delivered) or "none"
    message = f"User tokens delivered: {delivered}."
    if outcome.notes:
        message += " Not delivered: " + " ".join(outcome.notes)
    return Condition(c.CONDITION_TOKENS_READY, True, "Delivered", message[:2000])


def announcements(status: Mapping[str, Any], new: Condition) -> list[tuple[str, str, str]]:
    """Events for TokensReady: a new reason for waiting (once per reason), and the recovery."""
    previous = cond.find(status.get("conditions"), c.CONDITION_TOKENS_READY) or {}
    if not new.status and previous.get("reason") != new.reason:
        return [("Warning", new.reason, new.message)]
    if new.status and previous.get("status") == "False":
        return [("Normal", "TokensReady", new.message)]
    return []


def token_names(body: Mapping[str, Any]) -> frozenset[str]:
    """The UserToken names a WorkspaceSecret body's spec.userTokens lists (as stored: unparsed, never raises)."""
    items = ((body.get("spec") or {}).get("userTokens")) or ()
    if not isinstance(items, (list, tuple)):
        return frozenset()
    return frozenset(i["name"] for i in items if isinstance(i, Mapping) and isinstance(i.get("name"), str))


def token_state(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a workspace shows of a UserToken, apart from the token Secret's content (whose own watch events carry it):
    a change of this is worth reconciling its WorkspaceSecrets for. The phase only as usable or not: a refresh
    (Valid -> Refreshing -> Valid) changes nothing a workspace shows (status.tokens says Valid for both)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    phase = status.get("phase")
    return (meta.get("uid"), bool(meta.get("deletionTimestamp")), spec.get("user"), spec.get("application"),
            spec.get("secretName"), c.PHASE_VALID if phase in VALID_PHASES else phase, status.get("authorizationURL"),
            status.get("login"))


def token_secret_state(secret: Mapping[str, Any]) -> int:
    """A hash of what the workspace side reads of a token Secret (data, labels, owner): a watch event that changes
    none of it (an annotation) is no reason to reconcile every workspace using the token. In memory only."""
    meta = secret.get("metadata") or {}
    owners = tuple((o.get("kind"), o.get("name"), o.get("uid"), bool(o.get("controller")))
                   for o in meta.get("ownerReferences") or () if isinstance(o, Mapping))
    return hash((tuple(sorted((secret.get("data") or {}).items())), tuple(sorted((meta.get("labels") or {}).items())),
                 owners, secret.get("type")))


def next_check(outcome: TokensOutcome | None, now: datetime) -> float | None:
    """Seconds until the earliest delivered token expires (then TokensReady says so, should no refresh have
    reached the workspace Secret by then), or None."""
    moments = [v.expires_at for v in (outcome.views if outcome else ()) if v.delivered and v.expires_at is not None]
    if not moments:
        return None
    return max(1.0, (min(moments) - now).total_seconds() + 1.0)
