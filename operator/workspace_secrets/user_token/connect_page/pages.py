"""HTML of the connect page, the result pages and the error pages. Every value is escaped; no token is
ever passed here (TokenSummary carries none).

The page is for the user, not for kubectl: per account the provider by its proper name and host, the state in
plain words ("Connected as octocat", "Not connected", "Expired — reconnect"), the access the platform asks for,
when it was connected and refreshed, which of the user's workspaces wait for it, and the buttons. Phases stay in
data-phase attributes (for tests and styling); Condition messages, written for kubectl users ("open
status.authorizationURL"), are never shown. Works without JavaScript; the one script (the device code's copy
button) is allowed by its hash in the Content-Security-Policy (SCRIPT_CSP)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from urllib.parse import urlsplit

from workspace_secrets.api.oauth_application import DEFAULT_HOSTS
from workspace_secrets.user_token.connect import PROVIDER_NAMES, TokenSummary

# What each scope lets the platform do, in a few words (the common ones of the providers the operator speaks to).
SCOPES = {
    # GitHub
    "repo": "Read and write your repositories, private ones included",
    "public_repo": "Read and write your public repositories",
    "read:user": "Read your profile",
    "user": "Read and change your profile",
    "user:email": "Read your email addresses",
    "read:org": "See which organizations and teams you belong to",
    "workflow": "Change GitHub Actions workflows",
    "gist": "Create gists",
    "admin:public_key": "Add and remove your SSH keys (the workspace key)",
    "write:public_key": "Add your SSH keys",
    "read:public_key": "List your SSH keys",
    # GitLab
    "api": "Full access to the API as you (needed to add the workspace SSH key)",
    "read_api": "Read the API as you",
    "read_user": "Read your profile",
    "read_repository": "Clone and pull your repositories",
    "write_repository": "Push to your repositories",
    # Bitbucket Server / Data Center
    "REPO_READ": "Clone and pull your repositories",
    "REPO_WRITE": "Read and push to your repositories",
    "REPO_ADMIN": "Administer your repositories",
    "PUBLIC_REPOS": "Read public repositories",
    "ACCOUNT_WRITE": "Change your account (needed to add the workspace SSH key)",
    # OpenID Connect
    "openid": "Confirm who you are",
    "profile": "Read your name and username",
    "email": "Read your email address",
    "offline_access": "Stay connected without asking you again (renewal)",
}

_STYLE = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;background:#f6f8fa}
.wrap{max-width:52rem;margin:0 auto;padding:1.25rem 1rem 3rem}
h1{font-size:1.6rem;line-height:1.25;margin:.25rem 0 .25rem}
.who{margin:0;color:#424a53}
.intro{color:#424a53;margin:.75rem 0 1.25rem}
table.accounts,table.accounts tbody,table.accounts tr,table.accounts td{display:block;width:100%;padding:0;border:0}
.card{background:#fff;border:1px solid #d0d7de;border-radius:12px;padding:1rem 1.1rem 1.1rem;margin:0 0 1rem}
tr.focus .card{border-color:#0969da;box-shadow:0 0 0 3px rgba(9,105,218,.25)}
.head{display:flex;flex-wrap:wrap;justify-content:space-between;gap:.5rem 1rem;align-items:flex-start}
h2{font-size:1.25rem;margin:0;line-height:1.3}
.host{margin:0;color:#57606a;font-size:.9rem;overflow-wrap:anywhere}
.state{margin:0;font-weight:600;display:inline-flex;align-items:center;gap:.45rem;padding:.2rem .7rem;border-radius:999px;
 font-size:.95rem;overflow-wrap:anywhere;max-width:100%}
.state.ok{background:#dafbe1;color:#116329}.state.warn{background:#fff8c5;color:#6a3f00}
.state.err{background:#ffebe9;color:#a40e26}.state.off{background:#eaeef2;color:#32383f}.state.wait{background:#ddf4ff;color:#0a3069}
.dot{flex:none;width:.6rem;height:.6rem;border-radius:50%;background:currentColor}
.detail{margin:.65rem 0 0;color:#424a53}
.waiting{margin:.8rem 0 0;padding:.6rem .8rem;border-left:4px solid #bf8700;background:#fff8c5;color:#3b2300;border-radius:0 6px 6px 0}
dl.facts{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.35rem 1rem;margin:.9rem 0 0}
dt{color:#57606a}dd{margin:0;overflow-wrap:anywhere}
ul.scopes{list-style:none;margin:0;padding:0}ul.scopes li{margin:0 0 .25rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.88em;background:#eff2f5;border-radius:4px;padding:.05rem .3rem}
.device{margin:.9rem 0 0;padding:1rem;border:2px dashed #0969da;border-radius:10px;background:#f6faff}
.device p{margin:.2rem 0}
.code-row{display:flex;flex-wrap:wrap;align-items:center;gap:.6rem;margin:.5rem 0}
code.code{display:inline-block;font-size:2rem;line-height:1.2;letter-spacing:.12em;font-weight:700;padding:.35rem .75rem;background:#fff;
 color:#0a3069;border:1px solid #8c959f;border-radius:8px;user-select:all;-webkit-user-select:all;overflow-wrap:anywhere;max-width:100%}
.copied{color:#116329;font-weight:600}
.actions{display:flex;flex-wrap:wrap;gap:.6rem;margin-top:1.1rem;align-items:flex-start}
.actions form{margin:0}
button,.button,summary.button{font:inherit;font-weight:600;display:inline-block;min-height:2.75rem;padding:.5rem 1.1rem;border-radius:8px;
 border:1px solid #1a7f37;background:#1a7f37;color:#fff;cursor:pointer;text-decoration:none;line-height:1.6}
button.secondary,.button.secondary{background:#fff;color:#1f2328;border-color:#8c959f}
button.danger,summary.danger{background:#fff;color:#a40e26;border-color:#cf222e}
details.disconnect summary{list-style:none}details.disconnect summary::-webkit-details-marker{display:none}
details.disconnect[open]{flex-basis:100%}
.confirm{margin-top:.6rem;padding:.8rem;border:1px solid #cf222e;border-radius:8px;background:#fff5f5}
.confirm p{margin:0 0 .6rem}
:focus-visible{outline:3px solid #0969da;outline-offset:2px}
a{color:#0550ae}
.notice{padding:.8rem 1rem;border-radius:8px;margin:0 0 1rem;border:1px solid #1a7f37;background:#dafbe1;color:#0f3d1c}
.box{padding:1rem 1.1rem;border-radius:12px;border:1px solid #d0d7de;background:#fff;margin:1rem 0}
.box h1{font-size:1.35rem}.box.ok{border-color:#1a7f37;background:#dafbe1}.box.err{border-color:#cf222e;background:#ffebe9}
.sr-only{position:absolute;width:1px;height:1px;margin:-1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap;border:0}
@media (max-width:30rem){dl.facts{grid-template-columns:minmax(0,1fr);gap:0}dd{margin-bottom:.5rem}code.code{font-size:1.6rem}
 .actions>*{flex:1 1 100%}.actions button,.actions summary.button{width:100%;text-align:center}}
"""

# The copy button: shown only with JavaScript (without it, the code is one tap to select: user-select: all).
SCRIPT = (
    "document.querySelectorAll('button[data-copy]').forEach(function(b){b.hidden=false;"
    "b.addEventListener('click',function(){var t=b.getAttribute('data-copy'),s=b.parentNode.querySelector('.copied');"
    "function done(ok){s.textContent=ok?'Copied':'Select the code and copy it';}"
    "function old(){var a=document.createElement('textarea');a.value=t;a.setAttribute('readonly','');a.style.position='fixed';"
    "a.style.opacity='0';document.body.appendChild(a);a.select();var ok=false;try{ok=document.execCommand('copy');}catch(e){}"
    "a.remove();return ok;}"
    "if(navigator.clipboard&&window.isSecureContext){navigator.clipboard.writeText(t).then(function(){done(true);},"
    "function(){done(old());});}else{done(old());}});});"
)
SCRIPT_CSP = "'sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode() + "'"


@dataclass(frozen=True)
class Notice:
    """A line at the top of the page after an action (from a fixed set: never text taken from the request)."""

    text: str


def _page(title: str, body: str, *, script: bool = False) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body><div class=wrap>{body}</div>"
            + (f"<script>{SCRIPT}</script>" if script else "") + "</body></html>")


def provider_name(t: TokenSummary) -> str:
    return PROVIDER_NAMES.get(t.type, t.type or "Account")


def host_of(t: TokenSummary) -> str:
    """The provider's host as people write it: github.com, git.example.com:8443."""
    url = t.host or DEFAULT_HOSTS.get(t.type, "")
    return urlsplit(url).netloc if url else ""


def when(text: str | None, now: datetime) -> str:
    """An RFC 3339 time of the status as `<time>`: "5 minutes ago", "in 7 hours", with the exact UTC time as its title."""
    if not text:
        return ""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    seconds = (moment - now).total_seconds()
    future, span = seconds > 0, abs(seconds)
    if span < 60:
        words = "just now" if not future else "in less than a minute"
    else:
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            if span >= size:
                n = int(span // size)
                amount = f"{n} {unit}{'s' if n != 1 else ''}"
                words = f"in {amount}" if future else f"{amount} ago"
                break
    exact = moment.astimezone(timezone.utc).strftime("%d %b %Y, %H:%M UTC")
    return f"<time datetime='{escape(text)}' title='{escape(exact)}'>{escape(words)}</time>"


def state_of(t: TokenSummary) -> tuple[str, str, str]:
    """(tone, headline, detail) in plain words: what the user reads instead of the phase and the Condition message."""
    name = provider_name(t)
    if t.connected:
        return "ok", f"Connected as {t.login}" if t.login else "Connected", ""
    if t.phase == "Expired":
        return "warn", "Expired — reconnect", f"{name} no longer renews this connection. Reconnect to keep your workspaces working."
    if t.phase == "Revoked":
        return "warn", "Access revoked — reconnect", (f"{name} no longer accepts the token (it was revoked there). "
                                                      "Reconnect to keep your workspaces working.")
    if t.phase == "Error":
        if t.reason in ("ApplicationNotFound", "ApplicationNotReady", "ApplicationInvalid"):
            detail = f"{name} is not set up for your namespace yet. Ask your platform team."
        elif t.message and "authorizationURL" not in t.message:
            detail = t.message
        else:
            detail = "Something needs your platform team's attention."
        return "err", "Can't connect right now", detail
    if t.flow == "Device":
        if t.user_code:
            return "wait", "Waiting for you to enter the code", ""
        if t.reason in ("DeviceCodeExpired", "DeviceAuthorizationEnded"):
            return "off", "Not connected", "The last code expired or was declined. Get a new code to try again."
        return "off", "Not connected", f"Get a code, then enter it at {name} to connect."
    return "off", "Not connected", f"Connect to let your workspaces use your {name} account."


def _access(t: TokenSummary) -> str:
    if t.scopes is None:
        return ""
    if not t.scopes:
        what = ("A Vault token with the policies your platform's Vault role grants" if t.type == "vault"
                else f"What your platform's {provider_name(t)} application is set up for")
        return f"<dt>Access it asks for</dt><dd>{escape(what)}</dd>"
    items = "".join(f"<li><code>{escape(s)}</code> {escape(SCOPES.get(s, ''))}</li>" for s in t.scopes)
    return f"<dt>Access it asks for</dt><dd><ul class=scopes>{items}</ul></dd>"


def _names(names: Sequence[str]) -> str:
    return ", ".join(f"<b>{escape(n)}</b>" for n in names)


def _hidden(t: TokenSummary, csrf: str) -> str:
    return (f"<input type=hidden name=namespace value='{escape(t.namespace)}'><input type=hidden name=name value='{escape(t.name)}'>"
            f"<input type=hidden name=csrf value='{escape(csrf)}'>")


def _device(t: TokenSummary) -> str:
    if not (t.user_code and t.verification_url):
        return ""
    parts = urlsplit(t.verification_url)
    shown = (parts.netloc + parts.path) or t.verification_url
    code = escape(t.user_code)
    return (
        "<div class=device>"
        f"<p>1. Open <a href='{escape(t.verification_url)}' target=_blank rel=noopener>{escape(shown)}"
        "<span class=sr-only> (opens in a new tab)</span></a></p>"
        f"<p>2. Enter this code there:</p>"
        f"<div class=code-row><code id='user-code' class=code aria-label='Your code'>{code}</code>"
        f"<button type=button class='secondary copy' data-copy='{code}' hidden>Copy code</button>"
        "<span class=copied role=status aria-live=polite></span></div>"
        f"<p class=detail>After you approve at {escape(provider_name(t))}, reload this page: it shows Connected.</p></div>"
    )


def _card(t: TokenSummary, csrf: str, now: datetime, focus: str | None) -> str:
    key = f"{t.namespace}/{t.name}"
    name = provider_name(t)
    tone, headline, detail = state_of(t)
    host = host_of(t)
    facts = _access(t)
    if t.connected:
        if t.connected_at:
            facts += f"<dt>Connected</dt><dd>{when(t.connected_at, now)}</dd>"
        facts += f"<dt>Last refreshed</dt><dd>{when(t.refreshed_at, now) or 'Not yet'}</dd>"
        if t.next_refresh_at:
            facts += f"<dt>Renews</dt><dd>automatically, {when(t.next_refresh_at, now)}</dd>"
        elif t.expires_at:
            facts += f"<dt>Expires</dt><dd>{when(t.expires_at, now)} — then reconnect</dd>"
        if t.used_by:
            facts += f"<dt>Used by</dt><dd>{_names(t.used_by)}</dd>"
    waiting = ""
    if t.waiting:
        n = len(t.waiting)
        waiting = (f"<p class=waiting>{'A workspace is' if n == 1 else f'{n} workspaces are'} waiting for this account: "
                   f"{_names(t.waiting)}. {'It starts' if n == 1 else 'They start'} once you connect.</p>")
    if t.flow == "Device" and not t.connected:
        label, primary = ("New code" if t.user_code else "Get a code"), not t.user_code
    elif t.connected or t.phase in ("Expired", "Revoked"):
        label, primary = "Reconnect", not t.connected
    else:
        label, primary = "Connect", True
    actions = (f"<form method=post action='/connect/start'>{_hidden(t, csrf)}"
               f"<button type=submit class='{'' if primary else 'secondary'}' data-token='{escape(key)}' "
               f"aria-label='{escape(label)} {escape(name)} ({escape(key)})'>{escape(label)}</button></form>")
    if t.can_disconnect:
        revoke = (f"The token is revoked at {escape(name)} and removed" if t.revocable else "The stored token is removed")
        actions += (
            f"<details class=disconnect><summary class='button danger' aria-label='Disconnect {escape(name)} ({escape(key)})'>Disconnect</summary>"
            f"<div class=confirm><p>{revoke}; workspaces that use it lose access until you connect again.</p>"
            f"<form method=post action='/connect/disconnect'>{_hidden(t, csrf)}"
            f"<button type=submit class=danger data-disconnect='{escape(key)}'>Disconnect {escape(name)}</button></form></div></details>"
        )
    return (
        f"<tr id='{escape(key)}' class='{'focus' if key == focus else ''}' data-phase='{escape(t.phase)}'><td>"
        f"<section class=card aria-labelledby='h-{escape(key)}'>"
        f"<div class=head><div><h2 id='h-{escape(key)}'>{escape(name)}</h2>"
        f"<p class=host>{escape(host) + ' · ' if host else ''}<span class=key>{escape(key)}</span></p></div>"
        f"<p class='state phase {tone}' data-phase='{escape(t.phase)}'><span class=dot aria-hidden=true></span>{escape(headline)}</p></div>"
        + _device(t)
        + (f"<p class=detail>{escape(detail)}</p>" if detail else "")
        + waiting
        + (f"<dl class=facts>{facts}</dl>" if facts else "")
        + f"<div class=actions>{actions}</div></section></td></tr>"
    )


def accounts(user: str, tokens: Sequence[TokenSummary], csrf: str, *, focus: str | None = None, now: datetime | None = None,
             notice: Notice | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    cards = "".join(_card(t, csrf, now, focus) for t in tokens)
    listing = (f"<table class=accounts role=presentation><tbody>{cards}</tbody></table>" if cards else
               "<p class=box>No accounts to connect yet: your platform has not set up an account link for you.</p>")
    top = f"<p class=notice role=status id=notice>{escape(notice.text)}</p>" if notice else ""
    return _page("Connect your accounts", (
        f"<header><h1>Connect your accounts</h1><p class=who>Signed in as <b id=user>{escape(user)}</b></p></header>"
        "<main><p class=intro>Your workspaces use these accounts for git and other tools. Connecting takes you to the provider "
        "to sign in and approve the access below; the operator stores the token for your workspaces and renews it.</p>"
        f"{top}{listing}</main>"), script=any(t.user_code for t in tokens))


def result(ok: bool, title: str, message: str) -> str:
    return _page(title, f"<main><div class='box {'ok' if ok else 'err'}' id=result data-ok='{str(ok).lower()}' role=status><h1>{escape(title)}</h1>"
                 f"<p>{escape(message)}</p></div><p><a class='button secondary' href='/accounts'>Back to your accounts</a></p></main>")
