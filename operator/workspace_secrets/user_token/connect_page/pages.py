"""HTML of the connect page, the result pages and the error pages. Every value is escaped; no token is
ever passed here (TokenSummary carries none)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from workspace_secrets.user_token.connect import TokenSummary

PROVIDER_NAMES = {
    "github": "GitHub", "github-enterprise": "GitHub Enterprise", "gitlab": "GitLab", "gitlab-self-managed": "GitLab",
    "bitbucket-cloud": "Bitbucket Cloud", "bitbucket-server": "Bitbucket Server", "vault": "Vault", "oidc": "OpenID Connect",
}

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#1f2328}
h1{font-size:1.5rem} table{border-collapse:collapse;width:100%} td,th{padding:.5rem;border-bottom:1px solid #d0d7de;text-align:left;vertical-align:top}
.phase{font-weight:600} .Valid{color:#1a7f37} .Expired,.Revoked,.Error{color:#cf222e} .AwaitingAuthorization,.Refreshing{color:#9a6700}
button{padding:.35rem .9rem;border-radius:6px;border:1px solid #1f883d;background:#1f883d;color:#fff;cursor:pointer}
button.secondary{background:#f6f8fa;color:#1f2328;border-color:#d0d7de} .msg{color:#57606a;font-size:.9rem}
.box{padding:1rem;border-radius:6px;border:1px solid #d0d7de} .ok{border-color:#1a7f37;background:#dafbe1} .err{border-color:#cf222e;background:#ffebe9}
"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>")


def accounts(user: str, tokens: Sequence[TokenSummary], csrf: str, *, focus: str | None = None) -> str:
    rows = []
    for t in tokens:
        key = f"{t.namespace}/{t.name}"
        provider = PROVIDER_NAMES.get(t.type, t.type) + (f" ({t.host})" if t.host else "")
        connected = t.phase in ("Valid", "Refreshing")
        label = "Reconnect" if connected or t.phase in ("Expired", "Revoked") else "Connect"
        login = f"as <b>{escape(t.login)}</b>" if t.login and connected else ""
        expires = f"<div class=msg>token expires {escape(t.expires_at)}</div>" if t.expires_at and connected else ""
        if t.flow == "Device" and not connected:
            label = "New code" if t.user_code else "Get a code"
            if t.user_code and t.verification_url:
                expires += (f"<div>Enter the code <code id='user-code' style='font-size:1.2em'>{escape(t.user_code)}</code> at "
                            f"<a href='{escape(t.verification_url)}' target=_blank rel=noopener>{escape(t.verification_url)}</a></div>")
        rows.append(
            f"<tr id='{escape(key)}'{' style=background:#fff8c5' if key == focus else ''}>"
            f"<td>{escape(provider)}<div class=msg>{escape(key)}</div></td>"
            f"<td><span class='phase {escape(t.phase)}' data-phase='{escape(t.phase)}'>{escape(t.phase)}</span> {login}{expires}"
            f"<div class=msg>{escape(t.message)}</div></td>"
            f"<td><form method=post action='/connect/start'>"
            f"<input type=hidden name=namespace value='{escape(t.namespace)}'><input type=hidden name=name value='{escape(t.name)}'>"
            f"<input type=hidden name=csrf value='{escape(csrf)}'>"
            f"<button type=submit class='{'secondary' if connected else ''}' data-token='{escape(key)}'>{label}</button></form></td></tr>"
        )
    table = ("<table><tr><th>Provider</th><th>State</th><th></th></tr>" + "".join(rows) + "</table>") if rows else \
        "<p>No accounts to connect: no UserToken names you as its user.</p>"
    return _page("Connect your accounts", f"<h1>Connect your accounts</h1><p>Signed in as <b id=user>{escape(user)}</b>. "
                 "Workspaces use these accounts for git and other services; connecting takes you to the provider to sign in.</p>" + table)


def result(ok: bool, title: str, message: str) -> str:
    return _page(title, f"<div class='box {'ok' if ok else 'err'}' id=result data-ok='{str(ok).lower()}'><h1>{escape(title)}</h1>"
                 f"<p>{escape(message)}</p></div><p><a href='/accounts'>Back to your accounts</a></p>")
