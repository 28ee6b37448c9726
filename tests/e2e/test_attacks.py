"""The attack suite of issue 14: every cross-tenant path tried as the tenant would, on the real API server.

The attacker is `alice`, impersonated (`kubectl --as alice`) with exactly the shipped workspace-secrets-user role
bound in a namespace she shares with `bob` (and `carol`, `dave`), plus create/patch on Secrets there (what the
README asks for bring-your-own keys and user secrets), with deploy/policies applied. Web attacks go through the
real connect page with an HTTP client; the connect page signs users in only through the platform's auth proxy
(`attack_support.Browser`), and a victim's browser is a separate session.

Every test
- first proves it can tell: the same probe, run on the attack's precondition (the legitimate owner, or a
  platform identity), observes the access or effect that it then asserts is gone for alice;
- then runs the attack and asserts the refusal, with a clear message;
- and asserts the victim lost nothing: bob's Secrets (by digest), his UserTokens, his workspaces and his
  provider accounts are unchanged, no key of alice's is in bob's Secrets or accounts, and a new WorkspaceSecret
  of bob's still becomes Ready promptly (`Victim.still_served`).

Instances (issue 14): 1 `test_i1_*`, 2 `test_i2_*`, ... 12 `test_i12_*`; variants carry the instance they vary.
"""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from attack_support import (
    OAUTH_APP_PLURAL, Applications, Browser, FakeIssuer, Tenant, Victim, csrf_of, get_token,
    has_connect_form, installed_policies, openssh_key_with_rounds, pkcs8_key_with_iterations, public_key_of, rbac_forbidden,
    refused, refused_by_policy, secret_manifest, token_condition, token_manifest, wait_ready, wait_token, wait_ws_reason,
    ws_manifest,
)
from backends import ADMIN_NAMESPACE
from helpers import Api, digest, wait_for
from kubernetes import client as k8s

from fakes.git_providers import FakeGitProvider
from workspace_secrets.api import constants as c
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.user_keys.sshkeys import KeySpec, KeyType

USERS = ("alice", "bob", "carol", "dave")
CLIENT_SECRET = "atk-client-secret-0123456789abcdef"
GIT_CLIENT = "atk-git-client"
MIGRATION = "OAuth applications are platform configuration"
KEY_SPECS = [KeySpec(), KeySpec(KeyType.ECDSA), KeySpec(KeyType.RSA, 3072), KeySpec(KeyType.RSA, 4096)]
TOKEN_AUDIENCE = "atk-audience"

#: Providers the attack module adds to the operator's providers file (the operator is restarted with them).
ATTACK_PROVIDERS = """\
  - name: atk-bob-only
    type: kubernetes-token
    allow: {{namespaces: ["{ns}"], users: ["bob"]}}
    config: {{allowedServiceAccounts: ["atk-ci"], audiences: ["{aud}"], maxExpirationSeconds: 7200}}
  - name: atk-other-namespaces
    type: kubernetes-token
    allow: {{namespaces: ["not-{ns}", "wso-prod-*"]}}
    config: {{allowedServiceAccounts: ["atk-ci"], audiences: ["{aud}"], maxExpirationSeconds: 7200}}
  - name: atk-no-allow-rule
    type: kubernetes-token
    config: {{allowedServiceAccounts: ["atk-ci"], audiences: ["{aud}"], maxExpirationSeconds: 7200}}
  - name: atk-namespace
    type: kubernetes-token
    allow: {{namespaces: ["{ns}"]}}
    config: {{allowedServiceAccounts: ["atk-ci"], audiences: ["{aud}"], maxExpirationSeconds: 7200}}
"""


# --- the stage -----------------------------------------------------------------------------------------------
class Env:
    def __init__(self, cluster, api: Api, namespace: str, operator, tenant: Tenant, apps: Applications) -> None:
        self.cluster, self.api, self.ns, self.op, self.t, self.apps = cluster, api, namespace, operator, tenant, apps
        self.bob = Victim(api, namespace, "bob")
        self.alice_public = ""

    def as_(self, user: str) -> Browser:
        return Browser(self.op, user)

    def victim_ok(self, before: dict, *, foreign: list[str] | None = None, victim: Victim | None = None, within: float = 10) -> None:
        """The victim lost nothing and is still served."""
        v = victim or self.bob
        v.assert_untouched(before)
        v.assert_no_foreign_key([self.alice_public, *(foreign or [])])
        v.still_served(self.t, within=within)


@pytest.fixture(scope="module")
def api(cluster) -> Api:
    return Api(cluster.api_client())


@pytest.fixture(scope="module")
def attack_providers(cluster, credential_backends, wso_operator, module_namespace):
    """The session operator, restarted with the attack module's credential providers (allow rules that include
    or exclude alice); restored and restarted afterwards."""
    path = credential_backends.config_path
    original = path.read_text()
    path.write_text(original.rstrip("\n") + "\n" + ATTACK_PROVIDERS.format(ns=module_namespace, aud=TOKEN_AUDIENCE))
    wso_operator.process.stop()
    wso_operator.process.start()
    try:
        yield
    finally:
        path.write_text(original)
        wso_operator.process.stop()
        wso_operator.process.start()


@pytest.fixture(scope="module")
def env(cluster, api, module_namespace, wso_operator, attack_providers):
    if not wso_operator.webhook:
        pytest.skip("the attack suite needs the pod-injection webhook (local control plane)")
    tenant = Tenant(cluster, module_namespace)
    apps = Applications(api, ADMIN_NAMESPACE)
    e = Env(cluster, api, module_namespace, wso_operator.process, tenant, apps)
    try:
        with installed_policies(cluster, tenant, USERS):
            ns = module_namespace
            for sa in ("atk-ci", "atk-admin", "powerful"):
                api.core.create_namespaced_service_account(ns, {"metadata": {"name": sa}})
            # bob's standing workspace (his generated key) and a user secret of his; alice's own workspace.
            assert tenant.create(ws_manifest("bob-ws", "bob", workspace="bob-pod"), user="bob").check()
            assert tenant.create(secret_manifest("bob-npm", user="bob", data={"token": b"bob-npm-token-value"},
                                                 annotations={c.ANNOTATION_USER_ENV: "NPM_TOKEN=token"}), user="bob").check()
            assert tenant.create(ws_manifest("alice-ws", "alice", workspace="alice-pod"), user="alice").check()
            wait_ready(api, ns, "bob-ws")
            wait_ready(api, ns, "alice-ws")
            wait_for(lambda: "user.bob-npm.token" in (api.secret_digests(ns, "bob-ws") or {}), timeout=30, what="bob's user secret delivered")
            e.alice_public = public_key_of(api, ns, "alice-ws")
            assert e.alice_public
            try:
                yield e
            finally:
                _delete_all(api, ns)
    finally:
        apps.cleanup()


def _delete_all(api: Api, ns: str) -> None:
    """Delete the module's WorkspaceSecrets and UserTokens while their providers and applications still exist
    (the providers file is restored and the OAuthApplications removed right after): revocation can finish.
    UserTokens skip revocation at the test providers (a platform identity may ask for that)."""
    for plural in (c.USER_TOKEN_PLURAL, c.WORKSPACE_SECRET_PLURAL):
        for item in api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, plural)["items"]:
            name = item["metadata"]["name"]
            try:
                if plural == c.USER_TOKEN_PLURAL:
                    api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, ns, plural, name, {
                        "metadata": {"annotations": {c.ANNOTATION_SKIP_REVOCATION: "true"}}})
                api.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, ns, plural, name)
            except k8s.ApiException:
                pass
    try:
        wait_for(lambda: not any(api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, ns, p)["items"]
                                 for p in (c.USER_TOKEN_PLURAL, c.WORKSPACE_SECRET_PLURAL)), timeout=60, what="the module's objects deleted")
    except AssertionError:
        pass  # the namespace's deletion finishes the rest


def wait_token_refusal(api: Api, ns: str, name: str, *words: str, timeout: float = 30) -> dict:
    """Ready=False on the UserToken with a message naming one of `words` (what was refused)."""
    def probe():
        cond = token_condition(get_token(api, ns, name))
        return cond if cond and cond["status"] == "False" and any(w in cond["message"].lower() for w in words) else None
    return wait_for(probe, timeout=timeout, what=f"{name} refused ({words}); now {token_condition(get_token(api, ns, name))}")


def labelled_pod(name: str, labels: dict) -> k8s.V1Pod:
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=name, labels=labels),
                     spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="main", image="registry.invalid/ws:1")]))


def admit_pod(api: Api, ns: str, name: str, labels: dict) -> tuple[bool, str, k8s.V1Pod | None]:
    """Dry-run create (the webhook runs, nothing is stored): (admitted, refusal message, mutated pod)."""
    try:
        pod = api.core.create_namespaced_pod(ns, labelled_pod(name, labels), dry_run="All")
        return True, "", pod
    except k8s.ApiException as exc:
        return False, exc.body or "", None


def merge_patch(t: Tenant, kind: str, name: str, patch: dict, *, user: str):
    """PATCH as `user` straight to the API (the tenant has patch, not get, on Secrets)."""
    return t.api_patch(kind, name, patch, user=user)


def ws_env_names(api: Api, ns: str, name: str) -> set[str]:
    return {e["name"] for e in ((api.get_ws(ns, name) or {}).get("status") or {}).get("env", ())}


# --- OAuth: a real OpenID provider, and fake git providers ---------------------------------------------------
@pytest.fixture(scope="module")
def oidc(env, tmp_path_factory):
    from user_token_support import OIDCServer

    redirect = f"{env.op.connect_url}/oauth/callback"
    clients = [{"client_id": "atk-wso", "client_secret": CLIENT_SECRET, "redirect_uris": [redirect],
                "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}]
    server = OIDCServer(clients, tmp_path_factory.mktemp("atk-oidc")).start()
    env.apps.create("atk-oidc", "oidc", server.issuer, client_id="atk-wso", client_secret=CLIENT_SECRET, allowed_namespaces=[env.ns])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bob_token(env, oidc):
    """bob's UserToken, connected by bob himself (provider login 'bob')."""
    assert env.t.create(token_manifest("bob-oidc", "bob", "atk-oidc"), user="bob").check()
    wait_token(env.api, env.ns, "bob-oidc", phase=c.PHASE_AWAITING_AUTHORIZATION)
    result = env.as_("bob").connect(env.ns, "bob-oidc", login="bob")
    assert result.status_code == 200 and "data-ok='true'" in result.text, (result.status_code, result.text[-300:])
    return wait_token(env.api, env.ns, "bob-oidc", phase=c.PHASE_VALID)


def git_fake(env, name: str, allowed: list[str] | None = None) -> FakeGitProvider:
    fake = FakeGitProvider("github", clients={GIT_CLIENT: CLIENT_SECRET}).start()
    env.apps.create(name, "github", fake.url, client_id=GIT_CLIENT, client_secret=CLIENT_SECRET,
                    allowed_namespaces=allowed if allowed is not None else [env.ns])
    return fake


def fake_keys(fake: FakeGitProvider) -> list[str]:
    return [k["key"] for k in requests.get(f"{fake.url}/__fake__/state", timeout=5).json()["keys"]]


# ================================================================================================================
# 1. A UserToken names an application, never a Secret or a host.
# ================================================================================================================
REMOVED_FIELDS = {
    # bob's private key as the "client id" (placed in the authorize URL) and "client secret" (POSTed to host).
    "clientSecretRef": lambda bob_key: {"clientSecretRef": {"name": bob_key, "clientIDKey": c.KEY_SSH_PRIVATE,
                                                            "clientSecretKey": c.KEY_SSH_PRIVATE}},
    "host": lambda _: {"host": "https://collector.attacker.example"},
    "type": lambda _: {"type": "github"},
    "scopes": lambda _: {"scopes": ["admin:public_key", "repo"]},
    "vault": lambda _: {"vault": {"mount": "oidc", "role": "admin"}},
}


@pytest.mark.parametrize("field", list(REMOVED_FIELDS))
def test_i1_usertoken_cannot_name_a_secret_or_a_host(env, field):
    t, bob_key = env.t, user_key_secret_name("bob", KeySpec())
    before = env.bob.snapshot()
    # Proves it can tell: the same UserToken without the removed field is admitted.
    ok = t.dry_run(token_manifest(f"alice-{field.lower()}", "alice", "atk-oidc"), user="alice")
    assert ok.ok, ok.stderr
    # The attack, as alice and (a schema rule, so for everyone) as the platform.
    hostile = token_manifest(f"alice-{field.lower()}", "alice", "atk-oidc", **REMOVED_FIELDS[field](bob_key))
    for identity in ({"user": "alice"}, {"user": "ops", "groups": ("wso-e2e-platform",)}):
        result = t.create(hostile, **identity)
        assert refused(result, f"spec.{field}", MIGRATION, "spec.application"), result.stderr
    assert get_token(env.api, env.ns, f"alice-{field.lower()}") is None
    env.victim_ok(before)


def test_i1_application_not_allowed_in_the_namespace_is_not_found(env):
    allowed, elsewhere = FakeIssuer().start(), FakeIssuer().start()
    try:
        env.apps.create("atk-dev-here", "oidc", allowed.url, allowed_namespaces=[env.ns])
        env.apps.create("atk-dev-elsewhere", "oidc", elsewhere.url, allowed_namespaces=["wso-prod-*", f"not-{env.ns}"])
        before = env.bob.snapshot()
        # Proves it can tell: an application allowed here is used at once (device authorization requested).
        assert env.t.create(token_manifest("alice-here", "alice", "atk-dev-here", flow="Device"), user="alice").check()
        wait_for(lambda: "/device" in allowed.paths("POST"), timeout=30, what="the allowed application to be used")
        # The attack: an application of another namespace, and one that does not exist.
        assert env.t.create(token_manifest("alice-elsewhere", "alice", "atk-dev-elsewhere", flow="Device"), user="alice").check()
        assert env.t.create(token_manifest("alice-missing", "alice", "atk-no-such-app", flow="Device"), user="alice").check()
        reasons = ("ApplicationNotFound", "ApplicationNotAllowed")
        not_allowed = token_condition(wait_token(env.api, env.ns, "alice-elsewhere", reason=reasons))
        missing = token_condition(wait_token(env.api, env.ns, "alice-missing", reason=reasons))
        assert "OAuthApplication" in not_allowed["message"] and "atk-dev-elsewhere" in not_allowed["message"]
        # Nothing about the other namespaces is revealed, and the two read the same.
        assert "wso-prod" not in not_allowed["message"] and f"not-{env.ns}" not in not_allowed["message"]
        assert not_allowed["message"].replace("atk-dev-elsewhere", "X") == missing["message"].replace("atk-no-such-app", "X")
        time.sleep(2)
        assert elsewhere.requests == [], "an application not allowed in this namespace was used"
        env.victim_ok(before)
    finally:
        allowed.stop()
        elsewhere.stop()


def test_i1_tenants_cannot_create_or_change_oauth_applications(env):
    t = env.t
    app = {"apiVersion": c.API_VERSION, "kind": "OAuthApplication", "metadata": {"name": "alice-app"},
           "spec": {"type": "github", "host": "https://collector.attacker.example", "allowedNamespaces": ["*"],
                    "clientSecretRef": {"name": "x"}}}
    # Proves it can tell: the platform's admin may create one (server-side dry run).
    assert env.cluster.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(app), check=False).returncode == 0
    assert not t.can_i("create", f"{OAUTH_APP_PLURAL}.{c.GROUP}", "alice")
    result = t("create", "-f", "-", input=json.dumps(app), user="alice", namespaced=False)
    assert rbac_forbidden(result), result.stderr
    env.apps.create("atk-frozen", "github", "https://github.example", allowed_namespaces=["nobody-*"])
    result = t("patch", f"{OAUTH_APP_PLURAL}.{c.GROUP}", "atk-frozen", "--type=merge", "-p",
               json.dumps({"spec": {"allowedNamespaces": ["*"]}}), user="alice", namespaced=False)
    assert rbac_forbidden(result), result.stderr
    # Nor read the applications' client Secrets.
    assert t("auth", "can-i", "get", "secrets", "-n", ADMIN_NAMESPACE, user="alice", namespaced=False).stdout.strip() == "no"


# ================================================================================================================
# 2. A WorkspaceSecret never writes the victim's per-user key name; addSSHKey uploads only the operator's key.
# ================================================================================================================
@pytest.mark.parametrize("spec", KEY_SPECS, ids=lambda s: s.slug)
def test_i2_secret_name_of_another_users_key_is_refused(env, spec):
    t = env.t
    # dave has no key yet: the moment the attack needs (new user, bring-your-own user, just after a reset).
    target = user_key_secret_name("dave", spec)
    before = env.bob.snapshot()
    # Proves it can tell: without secretName alice's WorkspaceSecret is admitted, and the platform may name one.
    assert t.dry_run(ws_manifest("alice-squat", "alice"), user="alice").check()
    assert t.dry_run(ws_manifest("alice-squat", "alice", secretName="platform-chosen"), user="ops", groups=("wso-e2e-platform",)).check()
    result = t.create(ws_manifest("alice-squat", "alice", secretName=target), user="alice")
    assert refused_by_policy(result, "spec.secretName"), result.stderr
    assert env.api.get_secret(env.ns, target) is None
    assert env.api.get_ws(env.ns, "alice-squat") is None
    env.victim_ok(before)


@pytest.mark.parametrize("spec", KEY_SPECS, ids=lambda s: s.slug)
def test_i2_the_operator_refuses_reserved_names_even_from_the_platform(env, spec):
    """The policies are the first line; the operator checks itself too (a platform identity bypasses policies)."""
    api, ns = env.api, env.ns
    target = user_key_secret_name("dave", spec)
    tag = spec.slug.replace("-", "")
    # Proves it can tell: a platform-chosen name that is not reserved is written.
    api.create_ws(ns, f"plat-ok-{tag}", {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}, "secretName": f"plat-named-{tag}"})
    wait_ready(api, ns, f"plat-ok-{tag}")
    assert api.get_secret(ns, f"plat-named-{tag}") is not None
    before = env.bob.snapshot()
    try:
        api.create_ws(ns, f"plat-bad-{tag}", {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}, "secretName": target})
    except k8s.ApiException as exc:  # refused by the CRD's own rule: fine, as long as it says why
        assert exc.status == 422 and "secretName" in (exc.body or ""), exc.body
    else:
        cond = wait_ws_reason(api, ns, f"plat-bad-{tag}", ("InvalidSpec", "ReservedName"))
        assert "secretName" in cond["message"] and "reserved" in cond["message"].lower(), cond["message"]
        time.sleep(1)
    assert api.get_secret(ns, target) is None
    env.victim_ok(before)


FORGED_KEY_SECRETS = {
    # What alice could make (or get the old operator to make) at dave's key name, holding alice's key.
    "labelled-only": lambda env, ws_uid: {"labels": {c.LABEL_USER: "dave"}},
    "owned-by-a-workspace-secret": lambda env, ws_uid: {
        "labels": {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY, c.LABEL_USER: "dave"},
        "owner": {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "name": "alice-ws", "uid": ws_uid}},
    "another-users-label": lambda env, ws_uid: {
        "labels": {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY, c.LABEL_USER: "alice"}},
    "workspace-component": lambda env, ws_uid: {
        "labels": {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_WORKSPACE_SECRET, c.LABEL_USER: "dave"}},
}


@pytest.fixture(scope="module")
def carol_uploads(env):
    """Proves the probe can tell: carol has an operator-generated key, connects GitHub with addSSHKey, and her
    key is at her (fake) GitHub account."""
    fake = git_fake(env, "atk-gh-carol")
    try:
        assert env.t.create(ws_manifest("carol-ws", "carol"), user="carol").check()
        wait_ready(env.api, env.ns, "carol-ws")
        assert env.t.create(token_manifest("carol-gh", "carol", "atk-gh-carol", addSSHKey=True), user="carol").check()
        wait_token(env.api, env.ns, "carol-gh", phase=c.PHASE_AWAITING_AUTHORIZATION)
        page = env.as_("carol").connect(env.ns, "carol-gh", login="carol")
        assert page.status_code == 200 and "data-ok='true'" in page.text, (page.status_code, page.text[-300:])
        wait_for(lambda: fake_keys(fake) == [public_key_of(env.api, env.ns, "carol-ws")], timeout=30, what="carol's key uploaded")
        yield fake
    finally:
        fake.stop()


@pytest.mark.parametrize("variant", list(FORGED_KEY_SECRETS))
def test_i2_add_ssh_key_uploads_only_the_operators_own_key(env, carol_uploads, variant):
    api, ns = env.api, env.ns
    dave_key = user_key_secret_name("dave", KeySpec())
    assert api.get_secret(ns, dave_key) is None, "dave must have no key yet"
    forged = FORGED_KEY_SECRETS[variant](env, api.get_ws(ns, "alice-ws")["metadata"]["uid"])
    alice_pub = env.alice_public.encode()
    # Placed by a platform identity: tenants cannot write that name at all (test_i9_*); the operator must not
    # trust the name alone either.
    api.core.create_namespaced_secret(ns, secret_manifest(dave_key, labels=forged["labels"], owner=forged.get("owner"),
                                                          data={c.KEY_SSH_PUBLIC: alice_pub}))
    fake = git_fake(env, f"atk-gh-dave-{variant}")
    dave = Victim(api, ns, "dave", accounts=[fake])
    name = f"dave-gh-{variant}"[:50]
    try:
        before = dave.snapshot()
        bob_before = env.bob.snapshot()
        assert env.t.create(token_manifest(name, "dave", f"atk-gh-dave-{variant}", addSSHKey=True), user="dave").check()
        wait_token(api, ns, name, phase=c.PHASE_AWAITING_AUTHORIZATION)
        page = env.as_("dave").connect(ns, name, login="dave")
        assert page.status_code == 200 and "data-ok='true'" in page.text, (page.status_code, page.text[-300:])
        wait_token(api, ns, name, phase=c.PHASE_VALID)
        cond = wait_for(lambda: (x := token_condition(get_token(api, ns, name), c.CONDITION_SSH_KEY_UPLOADED))
                        and x["reason"] not in ("NotConnected", "UploadPending") and x, timeout=30, what="the SSH key decision")
        assert cond["status"] == "False", cond
        time.sleep(2)
        assert fake_keys(fake) == [], "a key that is not the operator's was uploaded to dave's account"
        dave.assert_no_foreign_key([env.alice_public], exclude=(dave_key,))  # the planted Secret itself
        assert dave.snapshot()["accounts"] == before["accounts"]
        env.victim_ok(bob_before)
    finally:
        api.core.delete_namespaced_secret(dave_key, ns)
        try:
            api.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.USER_TOKEN_PLURAL, name)
        except k8s.ApiException:
            pass
        wait_for(lambda: get_token(api, ns, name) is None, timeout=30, what="dave's token deleted")
        fake.stop()


# ================================================================================================================
# 3. Login CSRF: a flow belongs to the browser that started it.
# ================================================================================================================
def test_i3_a_callback_in_bobs_browser_with_alices_state_is_refused(env, oidc, bob_token):
    api, ns = env.api, env.ns
    t = env.t
    for name in ("alice-probe", "alice-csrf", "alice-csrf2"):
        assert t.create(token_manifest(name, "alice", "atk-oidc"), user="alice").check()
    assert t.create(token_manifest("bob-second", "bob", "atk-oidc"), user="bob").check()
    for name in ("alice-probe", "alice-csrf", "alice-csrf2", "bob-second"):
        wait_token(api, ns, name, phase=c.PHASE_AWAITING_AUTHORIZATION)
    # Proves it can tell: the probe "alice's token is connected to the provider account bob" observes it when
    # alice's own browser finishes the flow signed in at the provider as bob.
    alice = env.as_("alice")
    result = alice.connect(ns, "alice-probe", login="bob")
    assert "data-ok='true'" in result.text, result.text[-300:]
    assert wait_token(api, ns, "alice-probe", phase=c.PHASE_VALID)["status"]["login"] == "bob"
    before = env.bob.snapshot()

    # The attack: alice starts a flow, and makes bob's browser (signed in at the provider as bob) finish it.
    started = alice.start(ns, "alice-csrf")
    assert started.status_code == 303
    bob = env.as_("bob")
    landed = bob.follow(started.headers["Location"], login="bob")
    assert landed.status_code in (400, 403), landed.status_code
    assert "another browser" in landed.text or "started" in landed.text, landed.text[-300:]
    # Variant: bob's browser has a flow of its own in progress (its own flow cookie); still not alice's flow.
    started = alice.start(ns, "alice-csrf2")
    own = bob.start(ns, "bob-second")
    assert own.status_code == 303
    landed = bob.follow(started.headers["Location"], login="bob")
    assert landed.status_code in (400, 403), landed.status_code
    # Variant: the callback opened by a browser with no identity at all.
    started = alice.start(ns, "alice-csrf2")
    callback = env.as_("bob").follow(started.headers["Location"], login="bob", stop_at_callback=True)
    anonymous = Browser(env.op, None).get(callback)
    assert anonymous.status_code in (400, 401, 403, 503), anonymous.status_code

    time.sleep(1)
    for name in ("alice-csrf", "alice-csrf2"):
        ut = get_token(api, ns, name)
        assert ut["status"]["phase"] != c.PHASE_VALID and not ut["status"].get("login"), ut["status"]
        assert not (api.secret_data(ns, f"{name}-token") or {}).get(c.KEY_TOKEN)
    assert get_token(api, ns, "bob-second")["status"]["phase"] != c.PHASE_VALID
    env.victim_ok(before)


def test_i3_a_cross_site_connect_start_is_refused(env, oidc):
    """alice's page makes bob's browser POST /connect/start for bob's token: no CSRF token, refused."""
    api, ns = env.api, env.ns
    assert env.t.create(token_manifest("bob-xsite", "bob", "atk-oidc"), user="bob").check()
    wait_token(api, ns, "bob-xsite", phase=c.PHASE_AWAITING_AUTHORIZATION)
    bob = env.as_("bob")
    # Proves it can tell: from bob's own page, the form starts the flow.
    assert bob.start(ns, "bob-xsite").status_code == 303
    before = env.bob.snapshot()
    for csrf in ("", "forged", csrf_of(env.as_("alice").accounts().text)):
        response = bob.http.post(f"{env.op.connect_url}/connect/start", data={"namespace": ns, "name": "bob-xsite", "csrf": csrf},
                                 allow_redirects=False, timeout=10)
        assert response.status_code == 403, (csrf[:6], response.status_code)
    env.victim_ok(before)


# ================================================================================================================
# 4. A connect link is not an identity; the device code is not in status.
# ================================================================================================================
def test_i4_opening_bobs_authorization_url_gives_alice_nothing(env, oidc):
    api, ns = env.api, env.ns
    assert env.t.create(token_manifest("bob-pending", "bob", "atk-oidc"), user="bob").check()
    url = wait_token(api, ns, "bob-pending", phase=c.PHASE_AWAITING_AUTHORIZATION)["status"]["authorizationURL"]
    # A plain link: no credential in it.
    assert set(parse_qs(urlsplit(url).query)) <= {"focus"}, url
    assert url.startswith(env.op.connect_url)
    # Proves it can tell: bob opening it gets a Connect button for bob-pending.
    bob = env.as_("bob")
    page = bob.http.get(url, timeout=15)
    assert page.status_code == 200 and has_connect_form(page.text, ns, "bob-pending")
    before = env.bob.snapshot()

    alice = env.as_("alice")
    page = alice.http.get(url, timeout=15)
    assert not has_connect_form(page.text, ns, "bob-pending")
    # Directly, without the auth proxy: no page, no session.
    direct = Browser(env.op, None)
    page = direct.http.get(url, timeout=15)
    assert page.status_code in (401, 403, 503) and not direct.http.cookies, page.status_code
    # Her own CSRF token on a forged form for bob's token: refused.
    html = alice.accounts().text
    response = alice.http.post(f"{env.op.connect_url}/connect/start", data={"namespace": ns, "name": "bob-pending", "csrf": csrf_of(html)},
                               allow_redirects=False, timeout=10)
    assert response.status_code == 403, response.status_code
    assert "not one of your accounts" in response.text, response.text[-300:]
    assert get_token(api, ns, "bob-pending")["status"]["phase"] == c.PHASE_AWAITING_AUTHORIZATION
    env.victim_ok(before)


def test_i4_the_device_code_is_shown_only_to_its_owner(env):
    issuer = FakeIssuer(user_code="WSOATK-7Q2X").start()
    try:
        env.apps.create("atk-device", "oidc", issuer.url, allowed_namespaces=[env.ns])
        assert env.t.create(token_manifest("bob-device", "bob", "atk-device", flow="Device"), user="bob").check()
        wait_for(lambda: "/device" in issuer.paths("POST"), timeout=30, what="a device code requested")
        time.sleep(2)
        # Proves it can tell: bob's own connect page shows the code.
        wait_for(lambda: "WSOATK-7Q2X" in env.as_("bob").accounts().text, timeout=15, what="the code on bob's page")
        before = env.bob.snapshot()
        ut = get_token(env.api, env.ns, "bob-device")
        assert "userCode" not in (ut.get("status") or {})
        assert "WSOATK-7Q2X" not in json.dumps(ut), "the device code is readable by every tenant"
        assert "WSOATK-7Q2X" not in env.as_("alice").accounts().text
        events = env.api.core.list_namespaced_event(env.ns).items
        assert not any("WSOATK-7Q2X" in (e.message or "") for e in events)
        env.victim_ok(before)
    finally:
        issuer.stop()


# ================================================================================================================
# 5. Delete and re-create; bind only to the user's own workspace; user secrets cannot run code.
# ================================================================================================================
def test_i5_alice_cannot_delete_bobs_objects(env, oidc):
    t, api, ns = env.t, env.api, env.ns
    assert t.create(ws_manifest("bob-throwaway", "bob"), user="bob").check()
    assert t.create(token_manifest("bob-del-token", "bob", "atk-oidc"), user="bob").check()
    # Proves it can tell: bob deletes his own.
    assert t("delete", "wss", "bob-throwaway", "--wait=false", user="bob").check()
    wait_for(lambda: api.get_ws(ns, "bob-throwaway") is None, timeout=30, what="bob's own delete")
    # Re-created by the platform for bob (a re-provisioned workspace).
    assert t.platform("create", "-f", "-", input=json.dumps(ws_manifest("bob-reprov", "bob"))).check()
    wait_ready(api, ns, "bob-reprov")
    before = env.bob.snapshot()
    for kind, name in (("wss", "bob-ws"), ("wss", "bob-reprov"), ("usertokens", "bob-del-token")):
        result = t("delete", kind, name, "--wait=false", user="alice")
        assert refused_by_policy(result, "may not delete", "bob"), result.stderr
    result = t("delete", "wss", "bob-ws", "bob-reprov", "--wait=false", user="alice")
    assert not result.ok
    assert api.get_ws(ns, "bob-ws") and api.get_ws(ns, "bob-reprov") and get_token(api, ns, "bob-del-token")
    env.victim_ok(before)


def test_i5_a_workspace_secret_binds_only_to_its_users_workspace(env):
    """alice's WorkspaceSecret naming bob's workspace (e.g. squatting a name the platform just freed) binds to
    nothing, and nothing of hers reaches bob's pods."""
    t, api, ns = env.t, env.api, env.ns
    api.create_pod(ns, "bob-bind-pod", labels={c.LABEL_USER: "bob"})
    # Proves it can tell: bob's WorkspaceSecret naming it binds.
    assert t.create(ws_manifest("bob-bind", "bob", workspace="bob-bind-pod"), user="bob").check()
    wait_ready(api, ns, "bob-bind", type_=c.CONDITION_WORKSPACE_BOUND)
    # The platform frees a name (deletes and will re-create bob's WorkspaceSecret); alice takes it first.
    assert t.platform("create", "-f", "-", input=json.dumps(ws_manifest("bob-freed", "bob", workspace="bob-bind-pod"))).check()
    wait_ready(api, ns, "bob-freed")
    assert t.platform("delete", "wss", "bob-freed").check()
    before = env.bob.snapshot()
    assert t.create(ws_manifest("bob-freed", "alice", workspace="bob-bind-pod"), user="alice").check()
    assert t.create(ws_manifest("alice-on-bob", "alice", workspace="bob-bind-pod"), user="alice").check()
    for name in ("bob-freed", "alice-on-bob"):
        cond = wait_ws_reason(api, ns, name, ("WorkspaceUserMismatch",), type_=c.CONDITION_WORKSPACE_BOUND)
        assert c.LABEL_USER in cond["message"], cond["message"]
    pod = api.core.read_namespaced_pod("bob-bind-pod", ns)
    owners = {o.name for o in pod.metadata.owner_references or ()}
    assert not owners & {"bob-freed", "alice-on-bob"}
    # The pod the platform creates for bob next, still labelled with the (now alice's) name: refused.
    admitted, message, _ = admit_pod(api, ns, "bob-next-pod", {c.LABEL_WORKSPACE_SECRET: "bob-freed", c.LABEL_USER: "bob"})
    assert not admitted and c.LABEL_USER in message, message
    # And a Deployment-like workspace of bob's (not a Pod): the same.
    api.create_deployment(ns, "bob-deploy", labels={c.LABEL_USER: "bob"})
    assert t.create(ws_manifest("alice-on-deploy", "alice", workspace="bob-deploy", kind="Deployment"), user="alice").check()
    wait_ws_reason(api, ns, "alice-on-deploy", ("WorkspaceUserMismatch",), type_=c.CONDITION_WORKSPACE_BOUND)
    env.victim_ok(before)


def test_i5_the_webhook_refuses_a_pod_whose_user_is_not_the_workspace_secrets(env):
    api, ns = env.api, env.ns
    # Proves it can tell: a pod of bob's, labelled with his WorkspaceSecret, is admitted and gets the volume.
    admitted, message, pod = admit_pod(api, ns, "bob-pod-ok", {c.LABEL_WORKSPACE_SECRET: "bob-ws", c.LABEL_USER: "bob"})
    assert admitted, message
    assert c.POD_VOLUME_NAME in {v.name for v in pod.spec.volumes}
    before = env.bob.snapshot()
    for labels in ({c.LABEL_WORKSPACE_SECRET: "alice-ws", c.LABEL_USER: "bob"},  # bob's pod, alice's secrets
                   {c.LABEL_WORKSPACE_SECRET: "alice-ws"},  # no user label
                   {c.LABEL_WORKSPACE_SECRET: "bob-ws", c.LABEL_USER: "alice"},  # alice's pod, bob's secrets
                   {c.LABEL_WORKSPACE_SECRET: "bob-ws"}):
        admitted, message, _ = admit_pod(api, ns, "mixed", labels)
        assert not admitted and c.LABEL_USER in message, (labels, message[-300:])
    env.victim_ok(before)


DENIED_ENV = ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "BASH_ENV", "ENV", "PROMPT_COMMAND", "GIT_CONFIG_COUNT",
              "GIT_CONFIG_KEY_0", "GIT_SSH_COMMAND", "GIT_ASKPASS", "SSH_AUTH_SOCK", "PATH", "HOME", "PYTHONPATH",
              "PYTHONSTARTUP", "PERL5OPT", "RUBYOPT", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS", "HTTPS_PROXY", "https_proxy",
              "ALL_PROXY", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "KUBECONFIG", "XDG_CONFIG_HOME", "DYLD_INSERT_LIBRARIES",
              "MALLOC_CONF", "PS4", "ld_preload"]
ESCAPING_FILES = ["../workspace-secrets/ssh-privatekey", "../../etc/profile.d/zz.sh", "/etc/profile.d/zz.sh",
                  "a/../../b", ".."]


def test_i5_user_secrets_cannot_set_env_that_runs_code_or_write_outside_their_mount(env):
    t, api, ns = env.t, env.api, env.ns
    names = []
    for i, var in enumerate(DENIED_ENV):
        name = f"alice-env-{i}"
        assert t.create(secret_manifest(name, user="alice", data={"k": b"/tmp/evil.so"},
                                        annotations={c.ANNOTATION_USER_ENV: f"{var}=k"}), user="alice").check()
        names.append(name)
    for i, path in enumerate(ESCAPING_FILES):
        name = f"alice-file-{i}"
        assert t.create(secret_manifest(name, user="alice", data={"k": b"echo pwned"},
                                        annotations={c.ANNOTATION_USER_FILES: f"{path}=k"}), user="alice").check()
        names.append(name)
    assert t.create(secret_manifest("alice-env-ok", user="alice", data={"k": b"fine"},
                                    annotations={c.ANNOTATION_USER_ENV: "ALICE_SAFE=k", c.ANNOTATION_USER_FILES: "notes/ok.txt=k"}),
                    user="alice").check()
    before = env.bob.snapshot()
    assert t.create(ws_manifest("alice-env-ws", "alice", userSecrets={"names": [*names, "alice-env-ok"]}), user="alice").check()
    # Proves it can tell: the harmless env var and file are delivered.
    wait_for(lambda: "ALICE_SAFE" in ws_env_names(api, ns, "alice-env-ws"), timeout=30, what="ALICE_SAFE delivered")
    status = api.get_ws(ns, "alice-env-ws")["status"]
    assert "notes/ok.txt" in {f["path"] for f in status.get("files", ())}
    delivered = ws_env_names(api, ns, "alice-env-ws")
    assert not {v for v in DENIED_ENV if v != "GIT_SSH_COMMAND"} & delivered, delivered
    assert [e for e in status["env"] if e["name"] == c.KEY_GIT_SSH_COMMAND] == [{"name": c.KEY_GIT_SSH_COMMAND, "key": c.KEY_GIT_SSH_COMMAND}]
    assert not any(e["key"].startswith("user.") and e["name"] != "ALICE_SAFE" for e in status["env"])
    assert {f["path"] for f in status.get("files", ())} == {"notes/ok.txt"}
    cond = api.condition(ns, "alice-env-ws", c.CONDITION_USER_SECRETS_READY)
    assert cond["status"] == "False" and any(v in cond["message"] for v in DENIED_ENV), cond
    assert "changes how" in cond["message"] or "not relative" in cond["message"] or "outside" in cond["message"], cond
    # None of it reaches bob's workspace either.
    assert not ({"ALICE_SAFE", *DENIED_ENV} - {"GIT_SSH_COMMAND"}) & ws_env_names(api, ns, "bob-ws")
    env.victim_ok(before)


# ================================================================================================================
# 6. A user secret is a Secret the user created, of a type that makes sense.
# ================================================================================================================
FOREIGN_TYPES = {
    "kubernetes.io/service-account-token": {"kubernetes.io/service-account.name": "powerful"},
    "bootstrap.kubernetes.io/token": {},
    "helm.sh/release.v1": {},
    "kubernetes.io/dockercfg": {},
}


@pytest.mark.parametrize("type_", list(FOREIGN_TYPES))
def test_i6_a_secret_of_a_foreign_type_cannot_be_labelled_a_user_secret(env, type_):
    t = env.t
    slug = type_.split("/")[-1].replace(".", "-").lower()
    data = {".dockercfg": b"{}"} if type_ == "kubernetes.io/dockercfg" else {"token-id": b"abcdef", "token-secret": b"0123456789abcdef"} \
        if type_.startswith("bootstrap") else {"release": b"x"} if type_.startswith("helm") else {}
    # Proves it can tell: the same Secret as Opaque is accepted.
    assert t.dry_run(secret_manifest(f"alice-{slug}", user="alice", type_="Opaque", data=data or None), user="alice").check()
    before = env.bob.snapshot()
    hostile = secret_manifest(f"alice-{slug}", user="alice", type_=type_, data=data or None, annotations=FOREIGN_TYPES[type_] or None)
    if not data:
        hostile.pop("data")
    result = t.create(hostile, user="alice")
    assert refused_by_policy(result, "type"), result.stderr
    env.victim_ok(before)


def test_i6_a_service_account_token_is_never_delivered_even_when_the_platform_labels_it(env):
    api, ns = env.api, env.ns
    # Its `namespace` key holds the namespace name, which the session's secret-hygiene check would then find in
    # every Event: the Secret is deleted at the end of the test (and its token dies with it).
    try:
        # A platform identity (bypassing the policies) labels a ServiceAccount token Secret for alice.
        api.core.create_namespaced_secret(ns, {"metadata": {"name": "alice-sa-token", "labels": {c.LABEL_USER: "alice"},
                                                             "annotations": {"kubernetes.io/service-account.name": "powerful",
                                                                             c.ANNOTATION_USER_ENV: "KTOKEN=token"}},
                                               "type": "kubernetes.io/service-account-token"})
        wait_for(lambda: (api.secret_data(ns, "alice-sa-token") or {}).get("token"), timeout=30, what="Kubernetes to fill in the token")
        sa_token = digest(api.secret_data(ns, "alice-sa-token")["token"])
        # Proves it can tell: an Opaque Secret the platform labels for her is delivered.
        api.core.create_namespaced_secret(ns, {"metadata": {"name": "alice-opaque", "labels": {c.LABEL_USER: "alice"},
                                                             "annotations": {c.ANNOTATION_USER_ENV: "OPAQUE_OK=token"}},
                                               "stringData": {"token": "fine"}})
        before = env.bob.snapshot()
        assert env.t.create(ws_manifest("alice-sa-ws", "alice", userSecrets={"names": ["alice-sa-token", "alice-opaque"]}), user="alice").check()
        wait_for(lambda: "OPAQUE_OK" in ws_env_names(api, ns, "alice-sa-ws"), timeout=30, what="the Opaque user secret delivered")
        assert "KTOKEN" not in ws_env_names(api, ns, "alice-sa-ws")
        assert sa_token not in (api.secret_digests(ns, "alice-sa-ws") or {}).values()
        cond = api.condition(ns, "alice-sa-ws", c.CONDITION_USER_SECRETS_READY)
        assert cond["status"] == "False" and "service-account-token" in cond["message"], cond
        env.victim_ok(before)
    finally:
        api.core.delete_namespaced_secret("alice-sa-token", ns)


def test_i6_labelling_an_existing_secret_is_refused(env):
    t, api, ns = env.t, env.api, env.ns
    api.core.create_namespaced_secret(ns, {"metadata": {"name": "platform-db"}, "stringData": {"password": "platform-db-password"}})
    assert t.create(secret_manifest("alice-plain", data={"v": b"x"}), user="alice").check()
    # Proves it can tell: alice may create a Secret with her label (and the platform may label for her).
    assert t.create(secret_manifest("alice-labelled", user="alice"), user="alice").check()
    assert t("label", "secret", "alice-plain", f"{c.LABEL_USER}=alice", "--dry-run=server", user="ops", groups=("wso-e2e-platform",)).check()
    before = env.bob.snapshot()
    # (kubectl label/annotate read the object first; the tenant has patch, not get, so she patches.)
    for secret in ("alice-plain", "platform-db"):
        for who in ("alice", "bob"):
            result = merge_patch(t, "secrets", secret, {"metadata": {"labels": {c.LABEL_USER: who}}}, user="alice")
            assert refused_by_policy(result, "existing Secret"), result.stderr
    # Nor touch bob's labelled Secret: re-annotate it to deliver into env names she picks, or relabel it.
    for patch in ({"metadata": {"annotations": {c.ANNOTATION_USER_ENV: "LD_PRELOAD=token"}}},
                  {"metadata": {"labels": {c.LABEL_USER: "alice"}}},
                  {"metadata": {"labels": {c.LABEL_USER: None}}}):
        result = merge_patch(t, "secrets", "bob-npm", patch, user="alice")
        assert refused_by_policy(result, "bob"), result.stderr
    assert (api.get_secret(ns, "platform-db").metadata.labels or {}).get(c.LABEL_USER) is None
    env.victim_ok(before)


# ================================================================================================================
# 7. One tenant's key never stalls others.
# ================================================================================================================
HOSTILE_KEYS = {
    "bcrypt-20000-rounds": lambda: openssh_key_with_rounds(20_000, b"alice-pass"),
    "bcrypt-2^31-rounds": lambda: openssh_key_with_rounds(2**31 - 1, b"alice-pass"),
    "pbkdf2-10^9-iterations": lambda: pkcs8_key_with_iterations(10**9),
}


@pytest.mark.parametrize("variant", list(HOSTILE_KEYS))
def test_i7_an_expensive_key_does_not_stall_other_users(env, variant):
    t, api, ns = env.t, env.api, env.ns
    tag = variant.split("-")[0] + str(len(variant))
    # Proves it can tell: a key of the same format with a cheap KDF and the right passphrase is decrypted and used
    # (so the operator does run the KDF of a brought key), and bob's baseline readiness.
    assert t.create(secret_manifest(f"alice-cheap-key-{tag}", user="alice", type_="Opaque",
                                    data={"ssh-privatekey": openssh_key_with_rounds(16, b"alice-pass"), "passphrase": b"alice-pass"}),
                    user="alice").check()
    assert t.create(ws_manifest(f"alice-cheap-{tag}", "alice", ssh={"existingSecretRef": {"name": f"alice-cheap-key-{tag}",
                                                                                         "passphraseKey": "passphrase"}}), user="alice").check()
    wait_ready(api, ns, f"alice-cheap-{tag}")
    baseline = env.bob.still_served(t, within=10)
    before = env.bob.snapshot()

    assert t.create(secret_manifest(f"alice-costly-key-{tag}", user="alice", type_="Opaque",
                                    data={"ssh-privatekey": HOSTILE_KEYS[variant](), "passphrase": b"alice-pass"}), user="alice").check()
    for i in range(3):  # several at once
        assert t.create(ws_manifest(f"alice-costly-{tag}-{i}", "alice", ssh={"existingSecretRef": {"name": f"alice-costly-key-{tag}",
                                                                                                  "passphraseKey": "passphrase"}}),
                        user="alice").check()
    time.sleep(0.5)  # the operator has them
    # While alice's keys are in the operator's hands: bob's new WorkspaceSecret is Ready within a few seconds,
    # and a labelled pod of his is admitted promptly.
    took = env.bob.still_served(t, within=5)
    started = time.monotonic()
    admitted, message, _ = admit_pod(api, ns, "bob-pod-during", {c.LABEL_WORKSPACE_SECRET: "bob-ws", c.LABEL_USER: "bob"})
    assert admitted, message
    assert time.monotonic() - started < 5
    for i in range(3):
        cond = wait_ws_reason(api, ns, f"alice-costly-{tag}-{i}", ("InvalidExistingKey",), timeout=30)
        assert "existingSecretRef" in cond["message"]
    assert api.get_secret(ns, f"alice-costly-{tag}-0") is None
    print(f"bob's new WorkspaceSecret: {baseline:.2f}s before, {took:.2f}s during the attack")
    env.victim_ok(before, within=5)


# ================================================================================================================
# 8. Requests go only where the platform configured.
# ================================================================================================================
def test_i8_discovered_endpoints_on_another_origin_are_refused(env):
    issuer, elsewhere, honest = FakeIssuer().start(), FakeIssuer().start(), FakeIssuer().start()
    try:
        issuer.discovery = issuer.document(endpoints_at=elsewhere.url)
        env.apps.create("atk-honest", "oidc", honest.url, allowed_namespaces=[env.ns])
        env.apps.create("atk-cross-origin", "oidc", issuer.url, allowed_namespaces=[env.ns])
        # Proves it can tell: with endpoints on the issuer's origin, the device endpoint is called.
        assert env.t.create(token_manifest("alice-honest", "alice", "atk-honest", flow="Device"), user="alice").check()
        wait_for(lambda: "/device" in honest.paths("POST"), timeout=30, what="the honest issuer's device endpoint")
        before = env.bob.snapshot()
        for flow in ("Device", "AuthorizationCode"):
            name = f"alice-cross-{flow.lower()}"
            assert env.t.create(token_manifest(name, "alice", "atk-cross-origin", flow=flow), user="alice").check()
        cond = wait_token_refusal(env.api, env.ns, "alice-cross-device", "origin")
        assert "endpoint" in cond["message"], cond["message"]
        # The authorization-code flow: starting it on the connect page goes nowhere else either.
        wait_for(lambda: (get_token(env.api, env.ns, "alice-cross-authorizationcode") or {}).get("status"), timeout=30, what="status")
        page = env.as_("alice").accounts().text
        if has_connect_form(page, env.ns, "alice-cross-authorizationcode"):
            started = env.as_("alice").start(env.ns, "alice-cross-authorizationcode", page=page)
            assert started.status_code != 303 or not started.headers["Location"].startswith(elsewhere.url)
        time.sleep(1)
        assert elsewhere.requests == [], f"requests to another origin: {elsewhere.paths()}"
        env.victim_ok(before)
    finally:
        for s in (issuer, elsewhere, honest):
            s.stop()


def test_i8_device_flow_intervals_are_floored(env):
    """A provider answering interval 0 and expires_in 1 cannot make the operator hammer it (or anyone)."""
    issuer = FakeIssuer(device_interval=0, device_expires_in=1).start()
    try:
        env.apps.create("atk-hot", "oidc", issuer.url, allowed_namespaces=[env.ns])
        before = env.bob.snapshot()
        assert env.t.create(token_manifest("alice-hot", "alice", "atk-hot", flow="Device"), user="alice").check()
        # Proves it can tell: the probe sees the device request and the token endpoint's polls.
        wait_for(lambda: "/device" in issuer.paths("POST"), timeout=30, what="a device code requested")
        first = time.monotonic()
        wait_for(lambda: "/token" in issuer.paths("POST"), timeout=15, what="a first poll")
        time.sleep(max(0.0, 11 - (time.monotonic() - first)))
        polls, devices = issuer.times("POST", "/token"), issuer.paths("POST").count("/device")
        gaps = [round(b - a, 1) for a, b in zip(polls, polls[1:])]
        assert all(g >= 4.5 for g in gaps), f"polls {gaps} s apart with interval 0 (floor: 5 s)"
        assert devices == 1, f"{devices} device authorizations in ~11 s with expires_in 1"
        env.victim_ok(before)
    finally:
        issuer.stop()


def test_i8_an_oversized_answer_is_refused(env):
    issuer = FakeIssuer(body_size=2 * 1024 * 1024).start()
    honest = FakeIssuer().start()
    try:
        env.apps.create("atk-big", "oidc", issuer.url, allowed_namespaces=[env.ns])
        env.apps.create("atk-small", "oidc", honest.url, allowed_namespaces=[env.ns])
        # Proves it can tell: the same flow against an answer of normal size reaches the device step.
        assert env.t.create(token_manifest("alice-small", "alice", "atk-small", flow="Device"), user="alice").check()
        wait_for(lambda: "/device" in honest.paths("POST"), timeout=30, what="the device step")
        before = env.bob.snapshot()
        assert env.t.create(token_manifest("alice-big", "alice", "atk-big", flow="Device"), user="alice").check()
        wait_token_refusal(env.api, env.ns, "alice-big", "large", "size", "mib", "bytes")
        assert "/device" not in issuer.paths("POST")
        env.victim_ok(before)
    finally:
        issuer.stop()
        honest.stop()


# ================================================================================================================
# 9. Name squatting.
# ================================================================================================================
def test_i9_a_tenant_cannot_choose_a_secret_name(env):
    t = env.t
    # Proves it can tell: the platform may.
    assert t.dry_run(ws_manifest("alice-named", "alice", secretName="alice-chosen"), user="ops", groups=("wso-e2e-platform",)).check()
    before = env.bob.snapshot()
    for target in ("alice-chosen", "bob-ws", user_key_secret_name("bob", KeySpec())):
        result = t.create(ws_manifest("alice-named", "alice", secretName=target), user="alice")
        assert refused_by_policy(result, "spec.secretName"), result.stderr
    result = t("patch", "wss", "alice-ws", "--type=merge", "-p", json.dumps({"spec": {"secretName": "bob-ws"}}), user="alice")
    assert not result.ok and "secretName" in result.stderr, result.stderr
    env.victim_ok(before)


def reserved_secret_variants(env) -> dict[str, dict]:
    bob_ws_uid = env.api.get_ws(env.ns, "bob-ws")["metadata"]["uid"]
    out = {f"key-name-{s.slug}": secret_manifest(user_key_secret_name(u, s)) for s in KEY_SPECS for u in ("dave",)}
    out["key-name-of-bob"] = secret_manifest(user_key_secret_name("bob", KeySpec()))
    out["managed-by-label"] = secret_manifest("alice-managed", labels={c.LABEL_MANAGED_BY: c.OPERATOR_NAME})
    out["owner-reference"] = secret_manifest("alice-owned", owner={"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND,
                                                                   "name": "bob-ws", "uid": bob_ws_uid})
    out["owner-reference-usertoken"] = secret_manifest("alice-owned-ut", owner={"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND,
                                                                                "name": "bob-oidc", "uid": bob_ws_uid})
    return out


def test_i9_a_tenant_cannot_create_secrets_reserved_for_the_operator(env):
    t = env.t
    # Proves it can tell: an ordinary Secret of hers is created.
    assert t.create(secret_manifest("alice-notes"), user="alice").check()
    before = env.bob.snapshot()
    for variant, manifest in reserved_secret_variants(env).items():
        result = t.create(manifest, user="alice")
        assert refused_by_policy(result), (variant, result.stderr)
        assert env.api.get_secret(env.ns, manifest["metadata"]["name"]) is None or variant == "key-name-of-bob", variant
    env.victim_ok(before)


def test_i9_a_patch_never_returns_another_users_secret(env):
    """`patch` (which tenants have, for their own Secrets) answers with the whole object, data included: it must
    not work on the operator's Secrets or on Secrets labelled for someone else."""
    t = env.t
    touch = {"metadata": {"annotations": {"atk-touch": "1"}}}
    # Proves it can tell: on alice's own Secret, the answer carries its data.
    assert t.create(secret_manifest("alice-readback", user="alice", data={"v": b"alice value"}), user="alice").check()
    own = t.api_patch("secrets", "alice-readback", touch, user="alice")
    assert own.ok and json.loads(own.stdout).get("data"), own.stderr
    before = env.bob.snapshot()
    assert len(before["secrets"]) >= 3, before["secrets"].keys()
    for name in [*before["secrets"]]:
        result = t.api_patch("secrets", name, touch, user="alice")
        assert not result.ok and result.stdout == "", f"alice patched (and read) bob's Secret {name}"
        assert "ValidatingAdmissionPolicy" in result.stderr, result.stderr[-300:]
    env.victim_ok(before)


def test_i9_in_a_shared_namespace_a_patch_reads_no_unlabelled_secret(env):
    """The same answer-carries-the-data path on Secrets the operator never sees: bob's unlabelled Secret and the
    platform's (Coder keeps agent tokens in the workspace namespace). In a namespace labelled
    workspace-secrets.io/tenancy=shared a workspace user edits and deletes only Secrets labelled for them."""
    t, api, ns = env.t, env.api, env.ns
    touch = {"metadata": {"annotations": {"atk-touch": "shared"}}}
    assert t.create(secret_manifest("bob-unlabelled", data={"v": b"bob's unlabelled value"}), user="bob").check()
    api.create_secret(ns, "platform-agent-token", {"token": b"a platform agent token value"})
    victims = {name: api.secret_digests(ns, name) for name in ("bob-unlabelled", "platform-agent-token")}
    # Proves it can tell: without the namespace label, alice's PATCH answers with the data of both.
    for name in victims:
        result = t.api_patch("secrets", name, touch, user="alice")
        assert result.ok and json.loads(result.stdout).get("data"), f"{name}: {result.stderr[-300:]}"
    api.core.patch_namespace(ns, {"metadata": {"labels": {"workspace-secrets.io/tenancy": "shared"}}})
    try:
        wait_for(lambda: not t.api_patch("secrets", "bob-unlabelled", touch, user="alice").ok, timeout=30,
                 what="the shared-namespace rule to be enforced")
        before = env.bob.snapshot()
        for name in victims:
            for attempt in (touch, {"data": {"v": base64.b64encode(b"alice was here").decode()}}):
                result = t.api_patch("secrets", name, attempt, user="alice")
                assert not result.ok and result.stdout == "", f"alice patched (and read) {name}"
                assert refused_by_policy(result, "workspace-secrets.io/tenancy=shared"), result.stderr[-300:]
            deleted = t("delete", "secret", name, user="alice")
            assert not deleted.ok
        # Her own labelled Secret is still hers to edit.
        assert t.create(secret_manifest("alice-shared-own", user="alice"), user="alice").check()
        assert t.api_patch("secrets", "alice-shared-own", touch, user="alice").ok
        assert {name: api.secret_digests(ns, name) for name in victims} == victims
        env.victim_ok(before)
    finally:
        api.core.patch_namespace(ns, {"metadata": {"labels": {"workspace-secrets.io/tenancy": None}}})
        # The rest of the module runs in an unlabelled namespace again.
        wait_for(lambda: t.api_patch("secrets", "bob-unlabelled", touch, user="alice").ok, timeout=30,
                 what="the namespace label removed")


def test_i9_an_object_named_like_another_objects_secret_takes_nothing(env, bob_token):
    """alice names her WorkspaceSecret after bob's token Secret (`<UserToken>-token`) or his key Secret, and her
    UserToken's secretName after his workspace Secret: the operator never writes (or adopts) them for her."""
    t, api, ns = env.t, env.api, env.ns
    # Proves it can tell: the probe sees bob's token Secret and key Secret, with values.
    assert api.secret_digests(ns, "bob-oidc-token") and api.secret_digests(ns, user_key_secret_name("bob", KeySpec()))
    before = env.bob.snapshot()
    for name in ("bob-oidc-token", user_key_secret_name("bob", KeySpec())):
        result = t.create(ws_manifest(name, "alice"), user="alice")
        if result.ok:
            cond = wait_for(lambda: (x := api.condition(ns, name)) and x["status"] == "False" and x, timeout=30,
                            what=f"alice's {name} refused")
            assert name in cond["message"] or "reserved" in cond["message"].lower(), cond["message"]
        else:
            assert refused_by_policy(result), result.stderr
    result = t.create(token_manifest("alice-tok-squat", "alice", "atk-oidc", secretName="bob-ws"), user="alice")
    assert refused_by_policy(result, "spec.secretName"), result.stderr
    time.sleep(2)
    env.victim_ok(before)


def test_i9_a_secret_named_like_bobs_next_workspace_never_reaches_him(env):
    """alice pre-creates a Secret with the name bob's next WorkspaceSecret will write (its metadata.name), filled
    with her key and her GIT_SSH_COMMAND. bob must never run on it: either the operator takes the name over
    cleanly, or it refuses clearly and his pod is not started on her Secret."""
    t, api, ns = env.t, env.api, env.ns
    alice_values = {c.KEY_SSH_PRIVATE: b"alice-planted-private-key", c.KEY_GIT_SSH_COMMAND: b"ssh -o ProxyCommand=evil",
                    c.KEY_SSH_PUBLIC: env.alice_public.encode()}
    assert t.create(secret_manifest("bob-next", data=alice_values), user="alice").check()
    planted = {digest(v) for v in alice_values.values()}
    # Proves it can tell: the probe sees alice's values in Secret bob-next now.
    assert planted <= set(api.secret_digests(ns, "bob-next").values())
    before = env.bob.snapshot()
    assert t.create(ws_manifest("bob-next", "bob"), user="bob").check()
    cond = wait_for(lambda: (x := api.condition(ns, "bob-next")) and x.get("reason") not in (None, "Reconciling") and x, timeout=30,
                    what="bob-next decided")
    secret = api.get_secret(ns, "bob-next")
    values = set(api.secret_digests(ns, "bob-next").values())
    if cond["status"] == "True":
        assert not planted & values, "bob's workspace Secret still carries alice's values"
        assert (secret.metadata.labels or {}).get(c.LABEL_MANAGED_BY) == c.OPERATOR_NAME
    else:
        assert "bob-next" in cond["message"], cond
        admitted, message, _ = admit_pod(api, ns, "bob-next-pod", {c.LABEL_WORKSPACE_SECRET: "bob-next", c.LABEL_USER: "bob"})
        assert not admitted, "bob's pod was admitted onto a Secret alice planted"
    bob_key = api.secret_data(ns, user_key_secret_name("bob", KeySpec()))[c.KEY_SSH_PRIVATE]
    if cond["status"] != "True":
        assert digest(bob_key) not in values, "bob's key was written into a Secret alice created"
    env.bob.assert_untouched(before)
    env.bob.still_served(t)


# ================================================================================================================
# 10. Credential providers: explicit allow rules, deny by default.
# ================================================================================================================
def minted(api: Api, ns: str, ws: str) -> list[str]:
    data = api.secret_digests(ns, ws) or {}
    return [k for k in data if k.startswith("kube.")]


def anchors_of(api: Api, ns: str, ws: str) -> list[str]:
    uid = (api.get_ws(ns, ws) or {}).get("metadata", {}).get("uid")
    items = api.core.list_namespaced_secret(ns, label_selector=f"{c.LABEL_COMPONENT}={c.COMPONENT_TOKEN_ANCHOR}").items
    return [s.metadata.name for s in items if any(o.uid == uid for o in s.metadata.owner_references or ())]


def token_entry(provider: str, **params) -> list[dict]:
    return [{"name": "kube", "provider": provider, "lifecycle": "WhileExists", "parameters": {"serviceAccount": "atk-ci", "audiences": TOKEN_AUDIENCE, **params}}]


def test_i10_a_provider_mints_only_for_whom_its_allow_rule_names(env):
    t, api, ns = env.t, env.api, env.ns
    # Proves it can tell: bob, whom atk-bob-only allows, gets a token.
    assert t.create(ws_manifest("bob-cred", "bob", credentials=token_entry("atk-bob-only")), user="bob").check()
    wait_ready(api, ns, "bob-cred")
    assert minted(api, ns, "bob-cred") and anchors_of(api, ns, "bob-cred")
    before = env.bob.snapshot()
    for provider in ("atk-bob-only", "atk-other-namespaces", "atk-no-allow-rule"):
        name = f"alice-{provider}"[:40]
        assert t.create(ws_manifest(name, "alice", credentials=token_entry(provider)), user="alice").check()
        cond = wait_ws_reason(api, ns, name, ("PolicyViolation",))
        assert provider in cond["message"], cond["message"]
        assert "wso-prod" not in cond["message"], cond["message"]  # the rule's other namespaces are not revealed
        assert minted(api, ns, name) == [] and anchors_of(api, ns, name) == []
    env.victim_ok(before)


def test_i10_service_accounts_and_audiences_are_bounded(env):
    t, api, ns = env.t, env.api, env.ns
    # Proves it can tell: an allowed ServiceAccount with a configured audience is minted for alice.
    assert t.create(ws_manifest("alice-cred-ok", "alice", credentials=token_entry("atk-namespace")), user="alice").check()
    wait_ready(api, ns, "alice-cred-ok")
    assert minted(api, ns, "alice-cred-ok")
    before = env.bob.snapshot()
    for name, params in (("alice-cred-sa", {"serviceAccount": "atk-admin"}),
                         ("alice-cred-default", {"serviceAccount": "default"}),
                         ("alice-cred-aud", {"audiences": "https://kubernetes.default.svc"}),
                         ("alice-cred-aud2", {"audiences": f"{TOKEN_AUDIENCE},vault"})):
        assert t.create(ws_manifest(name, "alice", credentials=token_entry("atk-namespace", **params)), user="alice").check()
        cond = wait_ws_reason(api, ns, name, ("PolicyViolation",))
        assert "spec.credentials[0]" in cond["message"], cond["message"]
        assert minted(api, ns, name) == [] and anchors_of(api, ns, name) == []
    env.victim_ok(before)


# ================================================================================================================
# 11. The chart ships the isolation (helper tests install it; here only what renders by default).
# ================================================================================================================
def test_i11_the_chart_renders_the_policies_by_default(cluster):
    from pathlib import Path

    import yaml

    chart = next((p for p in (Path(__file__).resolve().parents[2] / "deploy" / "helm").iterdir() if (p / "Chart.yaml").exists()), None)
    assert chart is not None
    out = cluster.helm("template", "wso", str(chart), "--namespace", "workspace-secrets-system", "--kube-version", "1.37.0", check=False)
    assert out.returncode == 0, out.stderr[-1000:]
    kinds = [d.get("kind") for d in yaml.safe_load_all(out.stdout) if d]
    # Proves it can tell: the render has the operator's Deployment.
    assert "Deployment" in kinds
    assert kinds.count("ValidatingAdmissionPolicy") >= 3 and kinds.count("ValidatingAdmissionPolicyBinding") >= 3, kinds


# ================================================================================================================
# 12. Smaller: display, error messages, who may abandon cleanup.
# ================================================================================================================
def test_i12_display_masks_everything_but_public_values(env):
    t, api, ns = env.t, env.api, env.ns
    assert t.create(secret_manifest("alice-disp-src", user="alice", data={"token": b"alice-display-secret-value"},
                                    annotations={c.ANNOTATION_USER_ENV: "DISP_TOKEN=token"}), user="alice").check()
    display = [{"key": "pub", "valueFrom": {"secretKeyRef": {"key": c.KEY_SSH_PUBLIC}}},
               {"key": "tok", "valueFrom": {"secretKeyRef": {"key": "user.alice-disp-src.token"}}},
               {"key": "kube", "valueFrom": {"secretKeyRef": {"key": "kube.token"}}}]
    before = env.bob.snapshot()
    result = t.create(ws_manifest("alice-disp", "alice", display=display, credentials=token_entry("atk-namespace")), user="alice")
    if not result.ok:  # refused at admission: as good, if it says why
        assert "display" in result.stderr, result.stderr
        env.victim_ok(before)
        return
    wait_for(lambda: "user.alice-disp-src.token" in (api.secret_digests(ns, "alice-disp") or {}) and minted(api, ns, "alice-disp"),
             timeout=30, what="the values to display exist")
    wait_for(lambda: len((api.get_ws(ns, "alice-disp").get("status") or {}).get("display", ())) == 3, timeout=30, what="display")
    shown = {d["key"]: d["value"] for d in api.get_ws(ns, "alice-disp")["status"]["display"]}
    data = api.secret_data(ns, "alice-disp")
    # Proves it can tell: the public key is shown as it is.
    assert shown["pub"] == data[c.KEY_SSH_PUBLIC].decode().strip()
    for key, secret_key in (("tok", "user.alice-disp-src.token"), ("kube", "kube.token")):
        assert digest(shown[key].encode()) != digest(data[secret_key]) and data[secret_key].decode() not in shown[key], key
    env.victim_ok(before)


def test_i12_missing_and_not_owned_keys_read_the_same(env):
    t, api, ns = env.t, env.api, env.ns
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    bob_laptop = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    assert t.create(secret_manifest("bob-laptop", user="bob", data={c.KEY_SSH_PRIVATE: bob_laptop, "passphrase": b"-"}), user="bob").check()
    assert t.create(secret_manifest("alice-notakey", user="alice", data={c.KEY_SSH_PRIVATE: b"not a key"}), user="alice").check()
    before = env.bob.snapshot()
    cases = {"missing": "no-such-secret", "bobs": "bob-laptop", "bobs-generated": user_key_secret_name("bob", KeySpec()),
             "alice-not-a-key": "alice-notakey"}
    for case, secret in cases.items():
        for extra in ({}, {"privateKeyKey": "zz-key"}):
            name = f"alice-ref-{case}" + ("-k" if extra else "")
            assert t.create(ws_manifest(name, "alice", ssh={"existingSecretRef": {"name": secret, **extra}}), user="alice").check()

    def read(case: str, suffix: str = "") -> tuple[str, str]:
        cond = wait_for(lambda: (x := api.condition(ns, f"alice-ref-{case}{suffix}")) and x["status"] == "False" and x, timeout=30,
                        what=f"alice-ref-{case}{suffix} refused")
        return cond["reason"], cond["message"].replace(cases[case], "<name>")

    # Proves it can tell: a Secret of hers that is not a key reads differently from a missing one.
    assert read("alice-not-a-key") != read("missing")
    for suffix in ("", "-k"):
        assert read("bobs", suffix) == read("missing", suffix), suffix
        assert read("bobs-generated", suffix) == read("missing", suffix), suffix
        for case in ("bobs", "bobs-generated"):
            message = read(case, suffix)[1]
            assert c.KEY_SSH_PRIVATE not in message or not suffix, message  # no listing of a Secret's keys
            assert "passphrase" not in message, message
    env.victim_ok(before)


def test_i12_only_the_platform_abandons_cleanup_or_skips_revocation(env, oidc):
    t = env.t
    assert t.create(token_manifest("alice-keep", "alice", "atk-oidc"), user="alice").check()
    before = env.bob.snapshot()
    targets = (("wss", "alice-ws", c.ANNOTATION_ABANDON_CLEANUP), ("usertokens", "alice-keep", c.ANNOTATION_SKIP_REVOCATION))
    # Proves it can tell: a platform identity may set them.
    for kind, name, annotation in targets:
        result = t("annotate", kind, name, f"{annotation}=true", "--dry-run=server", user="ops", groups=("wso-e2e-platform",))
        assert result.ok, result.stderr
    for kind, name, annotation in targets:
        result = t("annotate", kind, name, f"{annotation}=true", user="alice")
        assert refused_by_policy(result, annotation), result.stderr
    result = t.create(ws_manifest("alice-abandon", "alice", annotations={c.ANNOTATION_ABANDON_CLEANUP: "true"}), user="alice")
    assert refused_by_policy(result, c.ANNOTATION_ABANDON_CLEANUP), result.stderr
    result = t.create({**token_manifest("alice-skip", "alice", "atk-oidc"),
                       "metadata": {"name": "alice-skip", "annotations": {c.ANNOTATION_SKIP_REVOCATION: "true"}}}, user="alice")
    assert refused_by_policy(result, c.ANNOTATION_SKIP_REVOCATION), result.stderr
    env.victim_ok(before)
