"""Pure decisions for UserTokens: the phase state machine, the refresh and validation schedule, the token
Secret, the connect link, and the Conditions. The controller observes (I/O), these functions decide."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any
from urllib.parse import quote

from workspace_secrets.api import constants as c
from workspace_secrets.api.user_token import UserToken
from workspace_secrets.api.conditions import Condition, Problem
from workspace_secrets.oauth.protocol import GitAccess, TokenSet
from workspace_secrets.oauth.token_secret import ANNOTATION_ISSUED_AT, ANNOTATION_SCOPES, format_time, git_credentials_line

SECRET_TYPE = "Opaque"


# --- phases ------------------------------------------------------------------------------------------
class Phase(str, Enum):
    AWAITING_AUTHORIZATION = c.PHASE_AWAITING_AUTHORIZATION
    VALID = c.PHASE_VALID
    REFRESHING = c.PHASE_REFRESHING
    EXPIRED = c.PHASE_EXPIRED
    REVOKED = c.PHASE_REVOKED
    ERROR = c.PHASE_ERROR


class Event(str, Enum):
    NO_TOKEN = "NoToken"  # no token Secret (never connected, or it was deleted)
    CONNECTED = "Connected"  # the callback exchanged a code (or Vault logged in)
    REFRESH_STARTED = "RefreshStarted"
    REFRESHED = "Refreshed"
    REFRESH_REJECTED = "RefreshRejected"  # invalid_grant, bad_refresh_token: the grant is gone
    TEMPORARY_FAILURE = "TemporaryFailure"  # 5xx, 429, network: retried with backoff
    LAPSED = "Lapsed"  # past expiresAt with no way to refresh
    VALIDATED = "Validated"
    TOKEN_REJECTED = "TokenRejected"  # 401 from the provider on an unexpired token, and no refresh could fix it
    CONFIG_ERROR = "ConfigError"  # spec, client Secret or provider answers only a human can fix


# (current phase, event) -> next phase; a missing pair means "the event decides alone" (see _DEFAULT).
_DEFAULT: dict[Event, Phase] = {
    Event.NO_TOKEN: Phase.AWAITING_AUTHORIZATION,
    Event.CONNECTED: Phase.VALID,
    Event.REFRESH_STARTED: Phase.REFRESHING,
    Event.REFRESHED: Phase.VALID,
    Event.REFRESH_REJECTED: Phase.EXPIRED,
    Event.LAPSED: Phase.EXPIRED,
    Event.VALIDATED: Phase.VALID,
    Event.TOKEN_REJECTED: Phase.REVOKED,
    Event.CONFIG_ERROR: Phase.ERROR,
}
_TRANSITIONS: dict[tuple[Phase, Event], Phase] = {
    # A lost token Secret after expiry/revocation keeps saying why the user must reconnect.
    (Phase.EXPIRED, Event.NO_TOKEN): Phase.EXPIRED,
    (Phase.REVOKED, Event.NO_TOKEN): Phase.REVOKED,
    # A temporary failure changes nothing the user must act on: the current token still works.
    (Phase.VALID, Event.TEMPORARY_FAILURE): Phase.VALID,
    (Phase.REFRESHING, Event.TEMPORARY_FAILURE): Phase.VALID,
    (Phase.AWAITING_AUTHORIZATION, Event.TEMPORARY_FAILURE): Phase.AWAITING_AUTHORIZATION,
    (Phase.EXPIRED, Event.TEMPORARY_FAILURE): Phase.EXPIRED,
    (Phase.REVOKED, Event.TEMPORARY_FAILURE): Phase.REVOKED,
    (Phase.ERROR, Event.TEMPORARY_FAILURE): Phase.ERROR,
    # Validation can only confirm a token that is in use; it does not resurrect an expired grant.
    (Phase.EXPIRED, Event.VALIDATED): Phase.EXPIRED,
    (Phase.REVOKED, Event.VALIDATED): Phase.REVOKED,
    (Phase.AWAITING_AUTHORIZATION, Event.REFRESH_STARTED): Phase.AWAITING_AUTHORIZATION,
}


def next_phase(current: Phase | None, event: Event) -> Phase:
    if current is not None and (current, event) in _TRANSITIONS:
        return _TRANSITIONS[(current, event)]
    return _DEFAULT.get(event, current or Phase.AWAITING_AUTHORIZATION)


def parse_phase(value: Any) -> Phase | None:
    try:
        return Phase(value)
    except ValueError:
        return None


def needs_authorization(phase: Phase | None) -> bool:
    """Phases in which status.authorizationURL is shown: the user has to (re)connect."""
    return phase in (None, Phase.AWAITING_AUTHORIZATION, Phase.EXPIRED, Phase.REVOKED)


# --- when a watch event asks for a pass -------------------------------------------------------------
#: kopf's own annotations on a UserToken (its diff base, the delete handler's progress): never a reason for a pass.
KOPF_BOOKKEEPING_ANNOTATIONS = frozenset({f"{c.GROUP}/last-handled-configuration", f"{c.GROUP}/usertoken-cleanup",
                                          f"{c.GROUP}/touch-dummy"})


def essence(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a pass depends on in the UserToken itself: its incarnation (uid), its spec (by generation), its
    labels and annotations (the refresh, validate and skip-revocation requests, or any annotation a user sets to
    ask for a fresh look) and whether it is being deleted. The operator writes only the status of a UserToken, so
    the watch events that echo those writes (and kopf's own bookkeeping) leave it unchanged and queue nothing."""
    meta = body.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in KOPF_BOOKKEEPING_ANNOTATIONS}
    return (
        meta.get("uid"),
        meta.get("generation"),
        bool(meta.get("deletionTimestamp")),
        tuple(sorted((meta.get("labels") or {}).items())),
        tuple(sorted(annotations.items())),
    )


# --- the schedule --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    refresh_fraction: float = 0.75  # refresh once this share of the lifetime has passed ...
    jitter_fraction: float = 0.10  # ... minus up to this share, spread per token
    min_lead: timedelta = timedelta(seconds=5)  # never later than this before expiry
    validate_interval: timedelta = timedelta(minutes=30)
    startup_spread: timedelta = timedelta(seconds=30)  # overdue refreshes after a restart are spread over this
    # Never two scheduled refreshes of one token closer than this, whatever lifetime the provider claims
    # (with the providers' floor on expires_in, an answer of expires_in: 1 cannot make a refresh loop).
    min_refresh_interval: timedelta = timedelta(seconds=60)


def jitter(uid: str) -> float:
    """A stable number in [0, 1) per token: the same token always gets the same offset, different
    tokens issued together are spread out, and no randomness makes the schedule untestable."""
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "big") / 2**64


def refresh_at(issued_at: datetime, expires_at: datetime, uid: str, schedule: Schedule = Schedule()) -> datetime:
    lifetime = expires_at - issued_at
    earliest = issued_at + schedule.min_refresh_interval
    if lifetime <= timedelta(0):
        return max(expires_at - schedule.min_lead, earliest)
    fraction = schedule.refresh_fraction - schedule.jitter_fraction * jitter(uid)
    planned = issued_at + lifetime * fraction
    latest = expires_at - min(schedule.min_lead, lifetime / 4)
    return max(earliest, min(planned, latest))


def refresh_delay(now: datetime, due: datetime, expires_at: datetime, uid: str, *, just_started: bool,
                  schedule: Schedule = Schedule()) -> float:
    """Seconds until the refresh should run. Overdue refreshes found right after an operator restart are
    spread over `startup_spread` (bounded by half the remaining lifetime) so a restart does not refresh
    every token in the same second."""
    delay = (due - now).total_seconds()
    if delay > 0 or not just_started:
        return max(delay, 0.0)
    remaining = (expires_at - now).total_seconds()
    spread = min(schedule.startup_spread.total_seconds(), max(remaining, 0.0) / 2)
    return spread * jitter(uid)


def validation_due(last: datetime | None, now: datetime, uid: str, schedule: Schedule = Schedule()) -> datetime:
    if last is None:
        return now
    return last + schedule.validate_interval * (1 - 0.1 * jitter(uid))


# --- the token Secret ---------------------------------------------------------------------------------
def managed_labels(ut: UserToken) -> dict[str, str]:
    return {
        c.LABEL_MANAGED_BY: c.OPERATOR_NAME,
        c.LABEL_NAME: c.OPERATOR_NAME,
        c.LABEL_PART_OF: c.OPERATOR_NAME,
        c.LABEL_COMPONENT: c.COMPONENT_USER_TOKEN,
        c.LABEL_INSTANCE: ut.name,
        c.LABEL_USER: ut.user,
    }


def owner_reference(ut: UserToken) -> dict[str, Any]:
    return {"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND, "name": ut.name, "uid": ut.uid,
            "controller": True, "blockOwnerDeletion": True}


def desired_token_secret(ut: UserToken, tokens: TokenSet, *, issued_at: datetime, generation: str,
                         git: GitAccess | None) -> dict[str, Any]:
    """The full token Secret. Its data is the only place a token ever goes."""
    access = tokens.access_token.reveal()
    data: dict[str, bytes] = {c.KEY_TOKEN: access, c.KEY_TOKEN_TYPE: tokens.token_type.encode()}
    if tokens.refresh_token:
        data[c.KEY_REFRESH_TOKEN] = tokens.refresh_token.reveal()
    if tokens.expires_at is not None:
        data[c.KEY_EXPIRES_AT] = format_time(tokens.expires_at).encode()  # type: ignore[union-attr]
    if git is not None:
        data[c.KEY_GIT_USERNAME] = git.username.encode()
        data[c.KEY_GIT_CREDENTIALS] = git_credentials_line(git.url, git.username, access)
    if ut.type == "vault" and ut.host:
        data[c.KEY_VAULT_ADDR] = ut.host.encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": ut.secret_name,
            "namespace": ut.namespace,
            "labels": managed_labels(ut),
            "annotations": {
                c.ANNOTATION_TOKEN_GENERATION: generation,
                ANNOTATION_ISSUED_AT: format_time(issued_at),
                **({ANNOTATION_SCOPES: " ".join(tokens.scopes)} if tokens.scopes is not None else {}),
            },
            "ownerReferences": [owner_reference(ut)],
        },
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


# --- the connect link -----------------------------------------------------------------------------------
def connect_page_link(base_url: str, ut: UserToken) -> str:
    """status.authorizationURL: the connect page, focused on this UserToken. A plain link, no credential in
    it: whoever opens it signs in through the platform (the auth proxy) and sees only their own tokens."""
    return f"{base_url.rstrip('/')}/accounts?focus={quote(ut.namespace, safe='')}/{quote(ut.name, safe='')}"


# --- conditions -------------------------------------------------------------------------------------------
REASON_DISCONNECTED = "Disconnected"
#: Ready reasons after which no device code is requested unasked: only the user's Connect (or the refresh
#: annotation) asks for a new one. An expired or declined code, and the user's Disconnect on the connect page.
DEVICE_CODE_ENDED = ("DeviceCodeExpired", "DeviceAuthorizationEnded", REASON_DISCONNECTED)


def disconnected(ut: UserToken) -> Problem:
    """Why a disconnected UserToken is not connected: the user disconnected it on the connect page. Kept (as the
    Ready reason) until the user connects again; a Device token gets no new code until then."""
    return Problem(REASON_DISCONNECTED, "disconnected on the connect page; " + (
        "click Connect there (or set the refresh annotation) for a new code" if ut.flow == "Device"
        else "connect again there (status.authorizationURL)"))


def conditions(ut: UserToken, phase: Phase, *, login: str | None, problem: Problem | None,
               ssh: Condition | None) -> list[Condition]:
    where = f"{ut.type}" + (f" at {ut.host}" if ut.host else "")
    if phase in (Phase.VALID, Phase.REFRESHING):
        ready = Condition(c.CONDITION_READY, True, "TokenValid", f"Secret {ut.secret_name!r} holds a working {where} token for {login!r}.")
        authorized = Condition(c.CONDITION_AUTHORIZED, True, "Connected", f"{ut.user!r} connected {where} as {login!r}.")
    elif phase is Phase.ERROR:
        p = problem or Problem("Error", "See the operator's Events for this UserToken.")
        ready = Condition(c.CONDITION_READY, False, p.reason, p.message)
        authorized = Condition(c.CONDITION_AUTHORIZED, False, p.reason, p.message)
    else:
        reason, message = {
            Phase.EXPIRED: ("Expired", f"The {where} token expired and can no longer be refreshed; {ut.user!r} must reconnect at status.authorizationURL."),
            Phase.REVOKED: ("Revoked", f"{where} no longer accepts the token (revoked at the provider); {ut.user!r} must reconnect at status.authorizationURL."),
        }.get(phase, ("AwaitingAuthorization", f"{ut.user!r} has not connected {where} yet: " + (
            "open status.authorizationURL (the connect page) for the code to enter at the provider." if ut.flow == "Device"
            else "open status.authorizationURL to connect.")))
        if problem is not None and problem.reason in DEVICE_CODE_ENDED:
            reason, message = problem.reason, f"{ut.user!r} has not connected {where}: {problem.message}."
        elif problem is not None:
            message = f"{message} ({problem.message})"
        ready = Condition(c.CONDITION_READY, False, reason, message)
        authorized = Condition(c.CONDITION_AUTHORIZED, False, reason, message)
    return [ready, authorized] + ([ssh] if ssh is not None else [])


def ssh_key_title(ut: UserToken) -> str:
    return f"{c.OPERATOR_NAME} {ut.namespace}/{ut.user}"
