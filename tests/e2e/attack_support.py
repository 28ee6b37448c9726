"""Support for the attack suite (test_attacks.py, issue 14): the tenant's tools and the victim's ledger.

- `Tenant`: kubectl as an impersonated user (`--as alice`), with exactly the shipped user role bound in the
  namespace plus create/patch on Secrets (what the README asks for bring-your-own keys and user secrets),
  and the shipped admission policies installed (`installed_policies`).
- `Victim`: what a victim owns (Secret digests, UserToken state, keys at a fake provider), snapshotted before
  and compared after an attack; plus "is the victim still served" (a new WorkspaceSecret of theirs becomes
  Ready promptly).
- `Browser`: a user's browser driven over HTTP (requests). The connect page signs users in only through the
  platform's auth proxy: a Browser for a user sends every connect-page request from the trusted proxy address
  with the user header, the way the proxy forwards it; a Browser without user reaches the page directly.
- `FakeIssuer`: a tiny OIDC issuer on loopback (http.server thread) whose discovery document the test writes,
  recording every request it gets -- for discovered endpoints on another origin, device-flow floors, body caps.
- Hostile bring-your-own keys: an OpenSSH key whose bcrypt KDF asks for many rounds, a PKCS#8 key whose PBKDF2
  asks for many iterations (crafted, never computed here).

Secret values are compared by digest only; nothing here prints one.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets as pysecrets
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import yaml
from helpers import Api, digest, wait_for
from user_token_support import BrowserSession, get_token  # noqa: F401 (get_token: re-exported for the tests)

from workspace_secrets.api import constants as c

REPO = Path(__file__).resolve().parents[2]
POLICY_DIR = REPO / "deploy" / "policies"
PARAMS_NAMESPACE, PARAMS_NAME = "workspace-secrets-system", "workspace-secrets-tenancy"
#: The same platform group test_tenant_isolation.py adds: both modules may run in one session.
PLATFORM_GROUP = "wso-e2e-platform"
OAUTH_APP_PLURAL = "oauthapplications"
OAUTH_APP_KIND = "OAuthApplication"


# --- kubectl as someone ---------------------------------------------------------------------------------
@dataclass
class Result:
    """A kubectl outcome: never stdout of a Secret read (only what the tests ask for)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> Result:
        """Must have succeeded; else fail with kubectl's message (stderr, never stdout)."""
        assert self.ok, f"kubectl failed ({self.returncode}): {self.stderr.strip()[-1500:]}"
        return self


class Tenant:
    """kubectl in one namespace, as an impersonated user (or as the test's admin when user is None)."""

    def __init__(self, cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace

    def __call__(self, *args: str, user: str | None = None, groups: tuple[str, ...] = (), input: str | None = None,
                 namespaced: bool = True) -> Result:
        identity = [f"--as={user}", *(f"--as-group={g}" for g in groups)] if user else []
        ns = ["-n", self.namespace] if namespaced else []
        out = self.cluster.kubectl(*identity, *ns, *args, input=input, check=False)
        return Result(out.returncode, out.stdout, out.stderr)

    def create(self, manifest: dict, **identity) -> Result:
        """`kubectl create` (no get needed: the tenant has create, not get, on Secrets)."""
        return self("create", "--validate=strict", "-f", "-", input=json.dumps(manifest), **identity)

    def dry_run(self, manifest: dict, **identity) -> Result:
        return self("create", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(manifest), **identity)

    def platform(self, *args: str, **kw) -> Result:
        """As a platform identity (the test's platform group), with no RBAC of its own beyond that group's."""
        return self(*args, user="platform-provisioner", groups=(PLATFORM_GROUP,), **kw)

    def api_patch(self, kind: str, name: str, patch: dict, *, user: str) -> Result:
        """A PATCH straight to the API as `user` (what curl does; kubectl patch GETs the object first, which needs
        `get`). stdout: the API's answer when it succeeded, as JSON (may hold Secret data: never print it)."""
        from kubernetes import client as k8s

        assert kind == "secrets"
        with self.cluster.api_client() as api_client:
            api_client.set_default_header("Impersonate-User", user)
            try:
                answer = k8s.CoreV1Api(api_client).patch_namespaced_secret(name, self.namespace, patch)
                return Result(0, json.dumps(api_client.sanitize_for_serialization(answer)), "")
            except k8s.ApiException as exc:
                body = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body or exc.reason)
                return Result(1, "", body)

    def can_i(self, verb: str, resource: str, user: str) -> bool:
        return self("auth", "can-i", verb, resource, user=user).stdout.strip() == "yes"


def refused(result: Result, *parts: str) -> bool:
    """Refused (non-zero exit) with every part in the message (case-insensitive)."""
    text = result.stderr.lower()
    return not result.ok and all(p.lower() in text for p in parts)


def refused_by_policy(result: Result, *parts: str) -> bool:
    """Refused at admission (a ValidatingAdmissionPolicy, a CRD rule or the webhook), not by RBAC."""
    text = result.stderr
    admission = ("ValidatingAdmissionPolicy" in text or "admission webhook" in text or "Invalid value" in text
                 or "is invalid" in text)
    return refused(result, *parts) and admission


def rbac_forbidden(result: Result) -> bool:
    return not result.ok and "forbidden" in result.stderr.lower() and "cannot" in result.stderr.lower()


def ws_manifest(name: str, user: str, *, workspace: str | None = None, kind: str = "Pod", annotations: dict | None = None,
                **spec) -> dict:
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": meta,
            "spec": {"user": user, "workspaceRef": {"kind": kind, "name": workspace or f"{name}-pod"}, **spec}}


def token_manifest(name: str, user: str, application: str, **spec) -> dict:
    return {"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND, "metadata": {"name": name},
            "spec": {"user": user, "application": application, **spec}}


def secret_manifest(name: str, *, user: str | None = None, type_: str | None = None, data: dict[str, bytes] | None = None,
                    labels: dict | None = None, annotations: dict | None = None, owner: dict | None = None) -> dict:
    meta: dict[str, Any] = {"name": name, "labels": {**({c.LABEL_USER: user} if user else {}), **(labels or {})}}
    if annotations:
        meta["annotations"] = annotations
    if owner:
        meta["ownerReferences"] = [owner]
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Secret", "metadata": meta,
                            "data": {k: base64.b64encode(v).decode() for k, v in (data or {"v": b"not a key"}).items()}}
    if type_:
        body["type"] = type_
    return body


# --- the shipped policies, installed for a module ---------------------------------------------------------
def _policy_documents() -> list[dict]:
    docs = []
    for path in sorted(POLICY_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _is_admission(doc: dict) -> bool:
    return doc.get("kind", "").startswith("ValidatingAdmissionPolicy")


def _terminating(cluster, namespace: str) -> bool:
    result = cluster.kubectl("get", "namespace", namespace, "-o", "jsonpath={.status.phase}", check=False)
    return result.returncode == 0 and result.stdout.strip() == "Terminating"


def _set_params(cluster, data: dict[str, str]) -> None:
    cluster.kubectl("patch", "configmap", "-n", PARAMS_NAMESPACE, PARAMS_NAME, "--type=merge", "-p", json.dumps({"data": data}))


@contextmanager
def installed_policies(cluster, tenant: Tenant, users: tuple[str, ...]) -> Iterator[None]:
    """deploy/policies applied exactly as shipped (idempotent: if they were installed before, they stay, with
    their parameters restored), the platform group added to the parameters, and in the namespace: the shipped
    workspace-secrets-user role for `users`, plus a Role with create/patch on Secrets (README: bring-your-own
    keys and user secrets). Removed afterwards in the documented order: policies and bindings first, and only
    once the API server no longer enforces them the role and the parameters."""
    docs = _policy_documents()
    admission = [d for d in docs if _is_admission(d)]
    pre_installed = all(
        cluster.kubectl("get", d["kind"].lower(), d["metadata"]["name"], check=False).returncode == 0 for d in admission)
    if not pre_installed:
        # A previous user's namespace deletion (--wait=false) may still be running: applying into a terminating
        # namespace fails half-way (the policies and bindings in, their parameters refused).
        wait_for(lambda: not _terminating(cluster, PARAMS_NAMESPACE), timeout=120, interval=0.5,
                 what=f"namespace {PARAMS_NAMESPACE} to finish terminating")
    created_ns = cluster.kubectl("get", "namespace", PARAMS_NAMESPACE, check=False).returncode != 0
    if created_ns:
        cluster.kubectl("create", "namespace", PARAMS_NAMESPACE)
    saved: dict[str, str] | None = None
    if pre_installed:
        saved = json.loads(cluster.kubectl("get", "configmap", "-n", PARAMS_NAMESPACE, PARAMS_NAME, "-o", "json").stdout)["data"]
    try:
        if not pre_installed:
            # Inside the try: a failed apply must not leave bindings without parameters (which deny every request
            # of the kinds they match, for every later test).
            cluster.kubectl("apply", "-f", str(POLICY_DIR))
        shipped = json.loads(cluster.kubectl("get", "configmap", "-n", PARAMS_NAMESPACE, PARAMS_NAME, "-o", "json").stdout)["data"]
        groups = shipped.get("platformGroups", "")
        if PLATFORM_GROUP not in [g.strip() for g in groups.split(",")]:
            _set_params(cluster, {"platformGroups": f"{groups}, {PLATFORM_GROUP}" if groups.strip() else PLATFORM_GROUP})
        t = tenant
        t("create", "rolebinding", "workspace-users", "--clusterrole=workspace-secrets-user",
          *(f"--user={u}" for u in users), f"--group={PLATFORM_GROUP}").check()
        t("create", "role", "byo-secrets", "--verb=create,patch", "--resource=secrets").check()
        t("create", "rolebinding", "byo-secrets", "--role=byo-secrets", *(f"--user={u}" for u in users)).check()
        # The platform group also gets what a provisioner has (full rights on Secrets and pods of the namespace).
        t("create", "role", "provisioner", "--verb=get,list,watch,create,update,patch,delete",
          "--resource=secrets,pods,workspacesecrets.workspace-secrets.io,usertokens.workspace-secrets.io").check()
        t("create", "rolebinding", "provisioner", "--role=provisioner", f"--group={PLATFORM_GROUP}").check()
        # Policies and parameter changes reach admission through informers: wait until both are enforced.
        wait_for(lambda: refused_by_policy(t.dry_run(ws_manifest("probe", "bob"), user="alice")), timeout=30,
                 what="the user-isolation policy to be enforced")
        wait_for(lambda: t.dry_run(ws_manifest("probe", "bob"), user="x", groups=(PLATFORM_GROUP,)).ok, timeout=30,
                 what="the test's platform group to be allowed")
        wait_for(lambda: refused_by_policy(t.dry_run(secret_manifest("probe", user="bob"), user="alice")), timeout=30,
                 what="the secret-label policy to be enforced")
        yield
    finally:
        if pre_installed:
            if saved is not None:
                _set_params(cluster, saved)
        else:
            for d in admission:
                cluster.kubectl("delete", "--ignore-not-found", d["kind"].lower(), d["metadata"]["name"], check=False)
            wait_for(lambda: not refused_by_policy(tenant.dry_run(ws_manifest("probe", "bob"), user="alice")),
                     timeout=30, what="the policies to be gone")
            for d in docs:
                if not _is_admission(d):
                    ns = d["metadata"].get("namespace")
                    cluster.kubectl("delete", "--ignore-not-found", d["kind"].lower(), d["metadata"]["name"],
                                    *(["-n", ns] if ns else []), check=False)
            if created_ns:
                cluster.kubectl("delete", "namespace", PARAMS_NAMESPACE, "--wait=false", check=False)


# --- OAuth applications (platform configuration) ----------------------------------------------------------
class Applications:
    """OAuthApplications and their client Secrets (in the operator's namespace), created by the platform
    (the tests' admin identity), all removed at the end."""

    def __init__(self, api: Api, operator_namespace: str) -> None:
        self.api, self.operator_namespace = api, operator_namespace
        self.created: list[str] = []

    def create(self, name: str, type_: str, host: str | None, *, client_id: str = "atk-client", client_secret: str = "",
               allowed_namespaces: list[str], scopes: list[str] | None = None, extra: dict | None = None) -> dict:
        secret_name = f"{name}-client"
        if type_ != "vault":
            body = {"metadata": {"name": secret_name}, "stringData": {"client-id": client_id, "client-secret": client_secret or pysecrets.token_urlsafe(24)}}
            try:
                self.api.core.create_namespaced_secret(self.operator_namespace, body)
            except Exception as exc:  # noqa: BLE001
                if getattr(exc, "status", None) != 409:
                    raise
                self.api.core.replace_namespaced_secret(secret_name, self.operator_namespace, body)
        spec: dict[str, Any] = {"type": type_, "allowedNamespaces": allowed_namespaces, **(extra or {})}
        if host:
            spec["host"] = host
        if type_ != "vault":
            spec["clientSecretRef"] = {"name": secret_name}
        if scopes:
            spec["scopes"] = scopes
        obj = {"apiVersion": c.API_VERSION, "kind": OAUTH_APP_KIND, "metadata": {"name": name}, "spec": spec}
        created = self.api.custom.create_cluster_custom_object(c.GROUP, c.VERSION, OAUTH_APP_PLURAL, obj)
        self.created.append(name)
        return created

    def cleanup(self) -> None:
        for name in self.created:
            try:
                self.api.custom.delete_cluster_custom_object(c.GROUP, c.VERSION, OAUTH_APP_PLURAL, name)
            except Exception:  # noqa: BLE001
                pass
            try:
                self.api.core.delete_namespaced_secret(f"{name}-client", self.operator_namespace)
            except Exception:  # noqa: BLE001
                pass


def token_condition(ut: dict | None, type_: str = "Ready") -> dict | None:
    return next((x for x in ((ut or {}).get("status") or {}).get("conditions", ()) if x["type"] == type_), None)


def wait_token(api: Api, namespace: str, name: str, *, phase: str | None = None, reason: str | tuple[str, ...] | None = None,
               type_: str = "Ready", timeout: float = 30) -> dict:
    reasons = (reason,) if isinstance(reason, str) else reason

    def probe():
        ut = get_token(api, namespace, name)
        if ut is None:
            return None
        if phase is not None and (ut.get("status") or {}).get("phase") != phase:
            return None
        if reasons is not None and ((token_condition(ut, type_) or {}).get("reason") not in reasons):
            return None
        return ut
    return wait_for(probe, timeout=timeout, what=f"UserToken {name} phase={phase} reason={reasons}")


def wait_ready(api: Api, namespace: str, name: str, type_: str = "Ready", timeout: float = 30) -> dict:
    """Condition `type_` True; on timeout the failure shows the condition as it was (never a value)."""
    def probe():
        cond = api.condition(namespace, name, type_)
        return cond if cond and cond["status"] == "True" else None
    try:
        return wait_for(probe, timeout=timeout, what=f"{name} {type_}=True")
    except AssertionError:
        raise AssertionError(f"{name} not {type_}=True after {timeout}s: {api.condition(namespace, name, type_)}") from None


def wait_ws_reason(api: Api, namespace: str, name: str, reasons: tuple[str, ...], type_: str = "Ready", timeout: float = 30) -> dict:
    def probe():
        cond = api.condition(namespace, name, type_)
        return cond if cond and cond["status"] == "False" and cond["reason"] in reasons else None
    return wait_for(probe, timeout=timeout, what=f"{name} {type_}=False with a reason in {reasons} (now: {api.condition(namespace, name, type_)})")


# --- the victim's ledger ----------------------------------------------------------------------------------
@dataclass
class Victim:
    """What user `user` owns in the namespace, by digest: Secrets labelled for them, Secrets owned by their
    WorkspaceSecrets/UserTokens, their per-user key Secrets; their UserTokens' connection state; the keys
    at fake provider accounts that are theirs."""

    api: Api
    namespace: str
    user: str
    accounts: list = field(default_factory=list)  # FakeGitProvider instances that are this user's accounts

    def _objects(self, plural: str) -> list[dict]:
        items = self.api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, self.namespace, plural)["items"]
        return [o for o in items if (o.get("spec") or {}).get("user") == self.user]

    def snapshot(self) -> dict[str, Any]:
        owned_uids = {o["metadata"]["uid"] for p in (c.WORKSPACE_SECRET_PLURAL, c.USER_TOKEN_PLURAL) for o in self._objects(p)}
        secrets_: dict[str, dict[str, str]] = {}
        for s in self.api.core.list_namespaced_secret(self.namespace).items:
            labels = s.metadata.labels or {}
            owners = {o.uid for o in s.metadata.owner_references or ()}
            if labels.get(c.LABEL_USER) == self.user or owners & owned_uids or s.metadata.name.startswith(f"ssh-{self.user}-"):
                secrets_[s.metadata.name] = {k: digest(base64.b64decode(v)) for k, v in (s.data or {}).items()
                                             if k not in (c.KEY_EXPIRES_AT,)}
        tokens = {}
        for ut in self._objects(c.USER_TOKEN_PLURAL):
            st = ut.get("status") or {}
            tokens[ut["metadata"]["name"]] = {"phase": st.get("phase"), "login": st.get("login"), "sshKey": st.get("sshKey"),
                                              "uid": ut["metadata"]["uid"]}
        workspaces = {ws["metadata"]["name"]: {"uid": ws["metadata"]["uid"], "user": ws["spec"]["user"],
                                               "workspaceRef": ws["spec"]["workspaceRef"],
                                               "fingerprint": (ws.get("status") or {}).get("sshKeyFingerprint")}
                      for ws in self._objects(c.WORKSPACE_SECRET_PLURAL)}
        accounts = [[(k["title"], k["key"]) for k in _fake_state(a)["keys"]] for a in self.accounts]
        return {"secrets": secrets_, "tokens": tokens, "workspaces": workspaces, "accounts": accounts}

    def assert_untouched(self, before: dict[str, Any], *, allow_new: bool = True) -> None:
        after = self.snapshot()
        for name, digests in before["secrets"].items():
            assert after["secrets"].get(name) == digests, f"{self.user}'s Secret {name} changed or vanished"
        if not allow_new:
            assert set(after["secrets"]) == set(before["secrets"]), f"new Secrets for {self.user}: {set(after['secrets']) - set(before['secrets'])}"
        for name, state in before["tokens"].items():
            assert after["tokens"].get(name) == state, f"{self.user}'s UserToken {name} changed: {state} -> {after['tokens'].get(name)}"
        for name, state in before["workspaces"].items():
            assert after["workspaces"].get(name) == state, f"{self.user}'s WorkspaceSecret {name} changed: {state} -> {after['workspaces'].get(name)}"
        assert after["accounts"] == before["accounts"], f"keys at {self.user}'s provider accounts changed"

    def assert_no_foreign_key(self, foreign_public_keys: list[str], *, exclude: tuple[str, ...] = ()) -> None:
        """No public key of someone else in any of the victim's Secrets (but `exclude`: planted by the test) or
        provider accounts."""
        blobs = {k.split()[1] for k in foreign_public_keys if k}
        mine = set(self.snapshot()["secrets"]) - set(exclude)
        for s in self.api.core.list_namespaced_secret(self.namespace).items:
            if s.metadata.name in mine:
                public = base64.b64decode((s.data or {}).get(c.KEY_SSH_PUBLIC, "") or b"").decode(errors="replace")
                assert not any(b in public for b in blobs), f"a foreign public key in {self.user}'s Secret {s.metadata.name}"
        for a in self.accounts:
            keys = [k["key"] for k in _fake_state(a)["keys"]]
            assert not any(b in k for b in blobs for k in keys), f"a foreign key at {self.user}'s provider account"

    def still_served(self, tenant: Tenant, *, within: float = 10.0, label: str = "probe") -> float:
        """The victim creates a new WorkspaceSecret; it must be Ready within `within` seconds. Returns the time."""
        name = f"{self.user}-{label}-{pysecrets.token_hex(2)}"
        started = time.monotonic()
        result = tenant.create(ws_manifest(name, self.user), user=self.user)
        assert result.ok, result.stderr
        self.api.wait_condition(self.namespace, name, timeout=within)
        return time.monotonic() - started


def _fake_state(fake) -> dict:
    with requests.get(f"{fake.url}/__fake__/state", timeout=5) as response:
        return response.json()


def public_key_of(api: Api, namespace: str, ws: str) -> str:
    return " ".join(((api.get_ws(namespace, ws) or {}).get("status") or {}).get("sshPublicKey", "").split()[:2])


# --- a browser behind the platform's auth proxy ----------------------------------------------------------
class Browser(BrowserSession):
    """A user's browser (cookies, redirects, forms), signed in by the auth proxy as `user` (None: nobody);
    requests to providers go directly. Every request stops at redirects unless told otherwise."""

    def __init__(self, operator, user: str | None) -> None:
        super().__init__(operator.connect_url, user=user, header=operator.connect_user_header,
                         source=operator.connect_trusted_proxy)
        self.last_callback: str | None = None

    def get(self, url: str, **kw) -> requests.Response:
        kw.setdefault("allow_redirects", False)
        return super().get(url, **kw)

    def accounts(self, focus: str | None = None) -> requests.Response:
        return self.get(f"{self.connect_url}/accounts" + (f"?focus={focus}" if focus else ""))

    def start(self, namespace: str, name: str, *, page: str | None = None) -> requests.Response:  # type: ignore[override]
        """Click Connect for namespace/name on the accounts page: the /connect/start answer (303 to the provider)."""
        html = page if page is not None else self.accounts().text
        form = connect_form(html, namespace, name)
        return self.post(urljoin(self.connect_url, "/connect/start"), data=form, allow_redirects=False)

    def connect(self, namespace: str, name: str, *, login: str) -> requests.Response:  # type: ignore[override]
        started = self.start(namespace, name)
        assert started.status_code == 303, (started.status_code, started.text[-300:])
        return self.follow(started.headers["Location"], login=login)


_FORM = re.compile(r"<form\b[^>]*action=['\"]?/connect/start['\"]?[^>]*>(.*?)</form>", re.S | re.I)
_INPUT = re.compile(r"<input\b[^>]*>", re.I)
_ATTR = re.compile(r"""(\w+)=(?:'([^']*)'|"([^"]*)"|([^\s>]+))""")


def connect_forms(html: str) -> list[dict[str, str]]:
    """Every Connect form on a connect page, as its hidden fields."""
    out = []
    for body in _FORM.findall(html):
        fields: dict[str, str] = {}
        for tag in _INPUT.findall(body):
            attrs = {m.group(1).lower(): unescape(next(g for g in m.groups()[1:] if g is not None)) for m in _ATTR.finditer(tag)}
            if "name" in attrs:
                fields[attrs["name"]] = attrs.get("value", "")
        out.append(fields)
    return out


def connect_form(html: str, namespace: str, name: str) -> dict[str, str]:
    for fields in connect_forms(html):
        if fields.get("namespace") == namespace and fields.get("name") == name:
            return fields
    raise AssertionError(f"no Connect button for {namespace}/{name} on the page")


def has_connect_form(html: str, namespace: str, name: str) -> bool:
    return any(f.get("namespace") == namespace and f.get("name") == name for f in connect_forms(html))


def csrf_of(html: str) -> str:
    forms = connect_forms(html)
    return next((f.get("csrf", "") for f in forms if f.get("csrf")), "")


# --- a tiny OIDC issuer on loopback --------------------------------------------------------------------------
class FakeIssuer:
    """An HTTP server on 127.0.0.1 serving a discovery document the test writes, a device-authorization and a
    token endpoint; it records every request (method, path, whether a client secret came along)."""

    def __init__(self, *, device_interval: int | None = 5, device_expires_in: int = 600, user_code: str = "WSOATTACK-CODE",
                 body_size: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.discovery: dict[str, Any] = {}
        self.device_interval = device_interval
        self.device_expires_in = device_expires_in
        self.user_code = user_code
        self.body_size = body_size  # >0: every answer is padded to this many bytes
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def paths(self, method: str | None = None) -> list[str]:
        with self._lock:
            return [r["path"] for r in self.requests if method is None or r["method"] == method]

    def times(self, method: str, path: str) -> list[float]:
        with self._lock:
            return [r["at"] for r in self.requests if r["method"] == method and r["path"] == path]

    def start(self) -> FakeIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _record(self, body: bytes) -> None:
                with issuer._lock:
                    issuer.requests.append({"method": self.command, "path": self.path.split("?", 1)[0], "at": time.monotonic(),
                                            "client_secret": b"client_secret" in body or "authorization" in {k.lower() for k in self.headers}})

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                if issuer.body_size:
                    data = json.dumps({**payload, "pad": "x" * issuer.body_size}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._record(b"")
                if self.path.startswith("/.well-known/openid-configuration"):
                    self._answer(200, issuer.discovery)
                else:
                    self._answer(404, {"error": "not_found"})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._record(body)
                if self.path.startswith("/device"):
                    answer: dict[str, Any] = {"device_code": pysecrets.token_urlsafe(16), "user_code": issuer.user_code,
                                              "verification_uri": f"{issuer.url}/verify", "expires_in": issuer.device_expires_in}
                    if issuer.device_interval is not None:
                        answer["interval"] = issuer.device_interval
                    self._answer(200, answer)
                elif self.path.startswith("/token"):
                    self._answer(400, {"error": "authorization_pending"})
                else:
                    self._answer(404, {"error": "not_found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="fake-issuer", daemon=True).start()
        self.discovery = self.document()
        return self

    def document(self, *, endpoints_at: str | None = None) -> dict[str, Any]:
        """A discovery document for this issuer; `endpoints_at` puts the endpoints on another origin."""
        base = endpoints_at or self.url
        return {"issuer": self.url, "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
                "device_authorization_endpoint": f"{base}/device", "userinfo_endpoint": f"{base}/me",
                "revocation_endpoint": f"{base}/revoke", "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"]}

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# --- hostile bring-your-own keys -----------------------------------------------------------------------------
def _read_string(body: bytes, offset: int) -> tuple[bytes, int]:
    length = int.from_bytes(body[offset:offset + 4], "big")
    return body[offset + 4:offset + 4 + length], offset + 4 + length


def bcrypt_rounds(pem: bytes) -> int:
    """The bcrypt KDF rounds an encrypted OpenSSH private key asks for."""
    body = base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))
    offset = len(b"openssh-key-v1\x00")
    _cipher, offset = _read_string(body, offset)
    _kdf, offset = _read_string(body, offset)
    options, _ = _read_string(body, offset)
    _salt, o = _read_string(options, 0)
    return int.from_bytes(options[o:o + 4], "big")


def openssh_key_with_rounds(rounds: int, passphrase: bytes) -> bytes:
    """A real ed25519 key encrypted (aes256-ctr, bcrypt KDF) with `passphrase`, whose header then claims
    `rounds` KDF rounds. Decrypting it costs `rounds` bcrypt rounds (and then fails the check integers);
    crafted, so the test never pays that itself. `rounds=16` leaves a key that decrypts fine."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.BestAvailableEncryption(passphrase))
    if rounds == bcrypt_rounds(pem):
        return pem
    lines = pem.strip().splitlines()
    body = bytearray(base64.b64decode(b"".join(lines[1:-1])))
    offset = len(b"openssh-key-v1\x00")
    _cipher, offset = _read_string(bytes(body), offset)
    _kdf, offset = _read_string(bytes(body), offset)
    options_start = offset + 4
    salt_len = int.from_bytes(body[options_start:options_start + 4], "big")
    at = options_start + 4 + salt_len
    body[at:at + 4] = rounds.to_bytes(4, "big")
    encoded = base64.b64encode(bytes(body))
    out = [lines[0], *[encoded[i:i + 70] for i in range(0, len(encoded), 70)], lines[-1]]
    pem = b"\n".join(out) + b"\n"
    assert bcrypt_rounds(pem) == rounds
    return pem


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def _int(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 8) // 8, "big")
    return _der(0x02, raw)


def pkcs8_key_with_iterations(iterations: int) -> bytes:
    """An ENCRYPTED PRIVATE KEY (PKCS#8, PBES2: PBKDF2-HMAC-SHA256 + AES-256-CBC) asking for `iterations`
    PBKDF2 iterations before anything can be checked. The ciphertext is random: no passphrase opens it."""
    seq = lambda *items: _der(0x30, b"".join(items))  # noqa: E731
    pbkdf2 = seq(_oid("1.2.840.113549.1.5.12"),
                 seq(_der(0x04, os.urandom(16)), _int(iterations), seq(_oid("1.2.840.113549.2.9"), b"\x05\x00")))
    scheme = seq(_oid("2.16.840.1.101.3.4.1.42"), _der(0x04, os.urandom(16)))
    algorithm = seq(_oid("1.2.840.113549.1.5.13"), seq(pbkdf2, scheme))
    der = seq(algorithm, _der(0x04, os.urandom(96)))
    encoded = base64.b64encode(der)
    lines = [encoded[i:i + 64] for i in range(0, len(encoded), 64)]
    return b"\n".join([b"-----BEGIN ENCRYPTED PRIVATE KEY-----", *lines, b"-----END ENCRYPTED PRIVATE KEY-----"]) + b"\n"


def ssh_keygen_public(private_pem: bytes) -> str:
    """The public line of an unencrypted private key (for comparing what reached a provider)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private_pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def run_quiet(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
