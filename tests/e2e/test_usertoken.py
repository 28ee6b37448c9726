"""UserToken on the real control plane with the real operator, against a real OAuth 2.0 authorization
server (panva's oidc-provider, tests/e2e/oauth_server) for the generic flows: connect (authorization code
+ PKCE), refresh ahead of expiry with rotating refresh tokens, revocation, replayed and forged state,
who may use the connect page, and no token bytes anywhere but the Secret."""

from __future__ import annotations

import base64
import threading

import pytest
import requests
from helpers import Api, digest, wait_for
from usertoken_support import BrowserSession, OIDCServer, via_proxy

from workspace_secrets.api import constants as c

CLIENT_SECRET = "wso-e2e-client-secret-0123456789abcdef"


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


@pytest.fixture(scope="module")
def oidc(wso_operator, tmp_path_factory):
    redirect = f"{wso_operator.process.connect_url}/oauth/callback"
    clients = [
        {"client_id": client_id, "client_secret": CLIENT_SECRET, "redirect_uris": [redirect],
         "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}
        for client_id in ("wso", "short-wso", "short-wso-2", "wso-revoke")
    ]
    server = OIDCServer(clients, tmp_path_factory.mktemp("oidc"), short_ttl=24).start()
    yield server
    server.stop()


def create_client_secret(api: Api, namespace: str, client_id: str, name: str = "oauth-client") -> None:
    api.create_secret(namespace, name, {"client-id": client_id.encode(), "client-secret": CLIENT_SECRET.encode()})


def create_token(api: Api, namespace: str, name: str, spec: dict) -> dict:
    body = {"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND, "metadata": {"name": name}, "spec": spec}
    return api.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, body)


def get_token(api: Api, namespace: str, name: str) -> dict | None:
    try:
        return api.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, name)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) == 404:
            return None
        raise


def wait_phase(api: Api, namespace: str, name: str, phase: str, timeout: float = 30) -> dict:
    def probe():
        ut = get_token(api, namespace, name) or {}
        return ut if (ut.get("status") or {}).get("phase") == phase else None
    return wait_for(probe, timeout=timeout, what=f"{name} phase {phase}")


def oidc_spec(oidc: OIDCServer, user: str = "alice", **extra) -> dict:
    return {"user": user, "type": "oidc", "host": oidc.issuer, "clientSecretRef": {"name": "oauth-client"}, **extra}


def connect(api, wso_operator, namespace: str, name: str, login: str = "alice") -> dict:
    ut = wait_phase(api, namespace, name, c.PHASE_AWAITING_AUTHORIZATION)
    link = ut["status"]["authorizationURL"]
    browser = BrowserSession(wso_operator.process.connect_url)
    result = browser.connect(link, namespace, name, login=login)
    assert result.status_code == 200 and "data-ok='true'" in result.text, result.text[-500:]
    return wait_phase(api, namespace, name, c.PHASE_VALID)


def token_values(api: Api, namespace: str, secret: str) -> dict[str, bytes]:
    return api.secret_data(namespace, secret) or {}


def test_connect_gives_a_valid_token_in_a_secret(api, namespace, wso_operator, oidc):
    create_client_secret(api, namespace, "wso")
    create_token(api, namespace, "alice-oidc", oidc_spec(oidc))
    ut = wait_phase(api, namespace, "alice-oidc", c.PHASE_AWAITING_AUTHORIZATION)
    status = ut["status"]
    assert status["authorizationURL"].startswith(f"{wso_operator.process.connect_url}/connect/{namespace}/alice-oidc?t=")
    ready = next(x for x in status["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "AwaitingAuthorization" and "authorizationURL" in ready["message"]

    ut = connect(api, wso_operator, namespace, "alice-oidc")
    status = ut["status"]
    assert status["login"] == "alice" and status["secretName"] == "alice-oidc-token"
    assert "authorizationURL" not in status and status["expiresAt"] and status["nextRefreshAt"]
    assert {"openid", "offline_access"} <= set(status["scopes"])
    secret = api.get_secret(namespace, "alice-oidc-token")
    assert secret.metadata.labels[c.LABEL_MANAGED_BY] == c.OPERATOR_NAME
    assert [o.uid for o in secret.metadata.owner_references] == [ut["metadata"]["uid"]]
    data = token_values(api, namespace, "alice-oidc-token")
    assert {c.KEY_TOKEN, c.KEY_REFRESH_TOKEN, c.KEY_EXPIRES_AT, c.KEY_TOKEN_TYPE} <= set(data)
    # The token works at the provider: its userinfo endpoint knows alice.
    me = requests.get(f"{oidc.issuer}/me", headers={"Authorization": b"Bearer " + data[c.KEY_TOKEN]}, timeout=10)
    assert me.status_code == 200 and me.json()["sub"] == "alice"
    reasons = {e.reason for e in api.core.list_namespaced_event(namespace).items}
    assert "Connected" in reasons
    # The connect page shows it as Valid, for alice only.
    status_code, page = via_proxy(f"{wso_operator.process.connect_url}/accounts", user="alice",
                                  header=wso_operator.process.connect_user_header, source=wso_operator.process.connect_trusted_proxy)
    assert status_code == 200 and "alice-oidc" in page and "data-phase='Valid'" in page
    status_code, page = via_proxy(f"{wso_operator.process.connect_url}/accounts", user="bob",
                                  header=wso_operator.process.connect_user_header, source=wso_operator.process.connect_trusted_proxy)
    assert status_code == 200 and "alice-oidc" not in page
