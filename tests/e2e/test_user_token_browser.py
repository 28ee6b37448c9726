"""The connect page in a real browser: Debian's Chromium, headless, driven by Selenium through Debian's
chromedriver (launched by path: no browser or driver download). The browser reaches the connect page through
the platform's authentication proxy, as in production (oauth2-proxy or the like in front of the page): here a
tiny proxy in the test that signs the user in -- it adds the user header and forwards from the trusted source
address. The user opens their UserToken's link, clicks Connect, signs in and consents at the real
authorization server (oidc-provider's login and consent pages), lands on the success page; the page says
"Connected as alice"; Disconnect revokes the grant at the provider, deletes the token Secret and the page says
"Not connected" again. The page is looked at on a desktop and at a phone's width (390 px): screenshots in the
test's tmp dir (WSO_DOCS_SCREENSHOTS=1 also copies them to docs/users/img/), no horizontal scrolling, the device
code visible and its copy button copying it.

The proxy is Chromium's HTTP proxy (--proxy-server) rather than a reverse proxy at another address: the
session operator's base URL, and so the OAuth redirect URI, is the connect page's own address. It adds the
header only to requests for the connect page; the provider's pages pass through untouched."""

from __future__ import annotations

import base64
import re
import http.client
import os
import shutil
import threading
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import requests
from helpers import Api, wait_for
from test_user_token import applications, connect, create_token, oidc, oidc_app, ut_spec, wait_phase  # noqa: F401 (fixtures)
from user_token_support import BrowserSession, device_code_on_page, get_token

from workspace_secrets.api import constants as c

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "users" / "img"
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


class AuthProxy:
    """The platform's auth proxy, reduced to what matters here: every request for the connect page carries
    `header: user` (whatever the browser sent is dropped) and leaves from the trusted address."""

    def __init__(self, connect_url: str, header: str, source: str, user: str) -> None:
        target = urlsplit(connect_url)
        self.connect = (target.hostname, target.port)
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # callback URLs carry authorization codes
                pass

            def _forward(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("content-length", "proxy-connection", "connection", header.lower())}
                to_page = (url.hostname, url.port) == proxy.connect
                if to_page:
                    proxy.requests += 1
                    headers[header] = user
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30, source_address=(source, 0) if to_page else None)
                conn.request(self.command, url.path + (f"?{url.query}" if url.query else ""), body=body or None, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "keep-alive"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def auth_proxy(wso_operator):
    process = wso_operator.process
    proxy = AuthProxy(process.connect_url, process.connect_user_header, process.connect_trusted_proxy, "alice")
    yield proxy
    proxy.stop()


@pytest.fixture
def browser(tmp_path, auth_proxy):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Chromium and chromedriver are needed: run tools/install-system-deps.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 # Every request through the auth proxy, loopback included (Chromium bypasses it for loopback otherwise).
                 f"--proxy-server={auth_proxy.url}", "--proxy-bypass-list=<-loopback>"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def card(browser, namespace: str, name: str):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, f"{namespace}/{name}")


def state(browser, namespace: str, name: str):
    from selenium.webdriver.common.by import By

    return card(browser, namespace, name).find_element(By.CSS_SELECTOR, ".state")


def full_page_screenshot(browser, path: Path) -> Path:
    """The whole page (not just the viewport), as the user would scroll through it."""
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def secret_gone(api: Api, namespace: str, name: str) -> bool:
    return api.secret_data(namespace, name) is None


def test_connect_and_disconnect_in_a_real_browser(api, namespace, wso_operator, oidc, applications, auth_proxy, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    create_token(api, namespace, "alice-browser", ut_spec(oidc_app(applications, oidc, "wso")))
    link = wait_phase(api, namespace, "alice-browser", c.PHASE_AWAITING_AUTHORIZATION)["status"]["authorizationURL"]
    wait = WebDriverWait(browser, 20)
    try:
        browser.get(link)
        assert browser.find_element(By.ID, "user").text == "alice"
        assert state(browser, namespace, "alice-browser").text == "Not connected"
        assert state(browser, namespace, "alice-browser").get_attribute("data-phase") == c.PHASE_AWAITING_AUTHORIZATION
        page_text = browser.find_element(By.TAG_NAME, "body").text
        assert "authorizationURL" not in page_text and c.PHASE_AWAITING_AUTHORIZATION not in page_text
        assert "openid" in card(browser, namespace, "alice-browser").text  # the access the platform asks for
        browser.find_element(By.CSS_SELECTOR, f"button[data-token='{namespace}/alice-browser']").click()
        # oidc-provider's login page, then its consent page.
        wait.until(EC.presence_of_element_located((By.NAME, "login"))).send_keys("alice")
        browser.find_element(By.NAME, "password").send_keys("any password")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(EC.presence_of_element_located((By.XPATH, "//button[normalize-space()='Continue']"))).click()
        result = wait.until(EC.presence_of_element_located((By.ID, "result")))
        assert result.get_attribute("data-ok") == "true", result.text
        assert "Connected as alice" in result.text
        status = wait_phase(api, namespace, "alice-browser", c.PHASE_VALID)["status"]
        assert status["login"] == "alice"
        token = api.secret_data(namespace, "alice-browser-token")[c.KEY_TOKEN]
        browser.find_element(By.LINK_TEXT, "Back to your accounts").click()
        wait.until(lambda b: state(b, namespace, "alice-browser").text == "Connected as alice")
        assert state(browser, namespace, "alice-browser").get_attribute("data-phase") == c.PHASE_VALID
        assert "Connected" in card(browser, namespace, "alice-browser").text and "Last refreshed" in card(browser, namespace, "alice-browser").text
        assert browser.find_element(By.CSS_SELECTOR, f"button[data-token='{namespace}/alice-browser']").text == "Reconnect"
        assert auth_proxy.requests >= 4  # page, start, callback, page: all through the auth proxy

        # Disconnect: confirm, and the page says so; the grant is revoked at the provider, the Secret deleted.
        card(browser, namespace, "alice-browser").find_element(By.CSS_SELECTOR, "details.disconnect summary").click()
        confirm = browser.find_element(By.CSS_SELECTOR, f"button[data-disconnect='{namespace}/alice-browser']")
        assert confirm.is_displayed() and "revoked" in card(browser, namespace, "alice-browser").text
        confirm.click()
        wait.until(EC.presence_of_element_located((By.ID, "notice")))
        assert "Disconnected" in browser.find_element(By.ID, "notice").text
        assert state(browser, namespace, "alice-browser").text == "Not connected"
        assert browser.find_element(By.CSS_SELECTOR, f"button[data-token='{namespace}/alice-browser']").text == "Connect"
        assert not browser.find_elements(By.CSS_SELECTOR, f"button[data-disconnect='{namespace}/alice-browser']")
        assert secret_gone(api, namespace, "alice-browser-token")
        status = get_token(api, namespace, "alice-browser")["status"]
        assert status["phase"] == c.PHASE_AWAITING_AUTHORIZATION and "login" not in status, status
        assert status["authorizationURL"] == link
        reasons = {e.reason for e in api.core.list_namespaced_event(namespace).items}
        assert {"Disconnected", "TokenRevoked"} <= reasons, reasons
        wait_for(lambda: requests.get(f"{oidc.issuer}/me", headers={"Authorization": b"Bearer " + token}, timeout=10).status_code == 401,
                 timeout=10, what="the old access token refused at the provider")
        # It stays disconnected (the next pass finds no token), and connecting again works.
        wait_phase(api, namespace, "alice-browser", c.PHASE_AWAITING_AUTHORIZATION)
        assert secret_gone(api, namespace, "alice-browser-token")
    finally:
        browser.save_screenshot(str(tmp_path / "connect-page.png"))


def test_the_page_on_a_desktop_and_a_phone(api, namespace, wso_operator, oidc, applications, auth_proxy, browser, tmp_path):  # noqa: F811
    """One connected account, one waiting for its device code with a workspace waiting for it: how it reads on a
    desktop and at 390 px (no horizontal scrolling, the code visible, its copy button copies it)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    create_token(api, namespace, "alice-oidc", ut_spec(oidc_app(applications, oidc, "wso")))
    connect(api, wso_operator, namespace, "alice-oidc")
    create_token(api, namespace, "alice-device", ut_spec(oidc_app(applications, oidc, "device-wso"), flow="Device"))
    api.create_ws(namespace, "web-ide", {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "web-ide"},
                                         "userTokens": [{"name": "alice-device"}]})
    link = f"{wso_operator.process.connect_url}/accounts?focus={namespace}/alice-device"
    user_code, _ = wait_for(lambda: device_code_on_page(BrowserSession.of(wso_operator.process).open(link).text, namespace, "alice-device"),
                            timeout=30, what="a device code on the page")
    wait = WebDriverWait(browser, 20)
    shots = {}

    browser.set_window_size(1280, 1000)
    browser.get(link)
    wait.until(lambda b: "web-ide" in card(b, namespace, "alice-device").text)
    assert state(browser, namespace, "alice-oidc").text == "Connected as alice"
    assert state(browser, namespace, "alice-device").text == "Waiting for you to enter the code"
    assert "A workspace is waiting for this account: web-ide" in card(browser, namespace, "alice-device").text
    code = browser.find_element(By.ID, "user-code")
    assert code.text == user_code and code.is_displayed()
    assert float(code.value_of_css_property("font-size").removesuffix("px")) >= 24  # large
    assert code.value_of_css_property("user-select") == "all"  # without JavaScript: one tap selects the whole code
    shots["desktop"] = full_page_screenshot(browser, tmp_path / "connect-page-desktop.png")

    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    browser.execute_cdp_cmd("Browser.grantPermissions", {"permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
                                                        "origin": wso_operator.process.connect_url})
    browser.get(link)
    assert browser.execute_script("return window.innerWidth") == PHONE["width"]
    widths = browser.execute_script("return [document.documentElement.scrollWidth, document.body.scrollWidth]")
    assert max(widths) <= PHONE["width"], f"horizontal scrolling at {PHONE['width']} px: {widths}"
    code = browser.find_element(By.ID, "user-code")
    rect = code.rect
    assert code.is_displayed() and rect["x"] >= 0 and rect["x"] + rect["width"] <= PHONE["width"], rect
    for button in browser.find_elements(By.CSS_SELECTOR, "button, summary"):
        if button.is_displayed():
            assert button.rect["x"] + button.rect["width"] <= PHONE["width"], (button.text, button.rect)
    copy = card(browser, namespace, "alice-device").find_element(By.CSS_SELECTOR, "button[data-copy]")
    assert copy.is_displayed() and copy.text == "Copy code"
    shots["phone"] = full_page_screenshot(browser, tmp_path / "connect-page-phone.png")
    copy.click()
    wait.until(lambda b: card(b, namespace, "alice-device").find_element(By.CSS_SELECTOR, ".copied").text == "Copied")
    pasted = browser.execute_async_script("var done = arguments[0]; navigator.clipboard.readText().then(done, function (e) { done('ERR ' + e); });")
    assert pasted == user_code
    if os.environ.get("WSO_DOCS_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        for kind, shot in shots.items():
            shutil.copyfile(shot, DOCS_IMG / f"connect-page-{kind}.png")


def test_a_user_cannot_disconnect_anothers_token_nor_without_the_csrf_token(api, namespace, wso_operator, oidc, applications):  # noqa: F811
    """Disconnect is a POST with the page's CSRF token, for the signed-in user's own tokens only: alice's own CSRF
    token on a form for bob's token is refused, and so is a POST without one for her own; nothing of bob's or hers
    changes."""
    app = oidc_app(applications, oidc, "wso")
    create_token(api, namespace, "bob-gh", ut_spec(app, user="bob"))
    create_token(api, namespace, "alice-gh", ut_spec(app))
    connect(api, wso_operator, namespace, "bob-gh", login="bob", user="bob")
    connect(api, wso_operator, namespace, "alice-gh")
    bob_before = api.get_secret(namespace, "bob-gh-token")
    alice_before = api.get_secret(namespace, "alice-gh-token")
    process = wso_operator.process
    alice = BrowserSession.of(process)
    page = alice.open(f"{process.connect_url}/accounts").text
    assert f"data-disconnect='{namespace}/alice-gh'" in page and "bob-gh" not in page
    csrf = re.search(r"name=csrf value='([^']*)'", page).group(1)
    url = f"{process.connect_url}/connect/disconnect"
    # Proves it can tell: bob's own page, with his CSRF token, has the Disconnect form for his token.
    assert f"data-disconnect='{namespace}/bob-gh'" in BrowserSession.of(process, "bob").open(f"{process.connect_url}/accounts").text

    attempts = [
        ("alice's CSRF token, bob's token", {"namespace": namespace, "name": "bob-gh", "csrf": csrf}),
        ("no CSRF token, bob's token", {"namespace": namespace, "name": "bob-gh"}),
        ("no CSRF token, her own token", {"namespace": namespace, "name": "alice-gh"}),
        ("a forged CSRF token, her own token", {"namespace": namespace, "name": "alice-gh", "csrf": csrf[:-4] + "AAAA"}),
    ]
    for what, form in attempts:
        response = alice.post(url, data=form, allow_redirects=False)
        assert response.status_code == 403, (what, response.status_code)
    # bob's browser, made to post by a page of alice's (a cross-site form: no CSRF token of his): refused too.
    bob = BrowserSession.of(process, "bob")
    assert bob.post(url, data={"namespace": namespace, "name": "bob-gh"}, allow_redirects=False).status_code == 403

    for name, before in (("bob-gh", bob_before), ("alice-gh", alice_before)):
        after = api.get_secret(namespace, f"{name}-token")
        assert after is not None and after.metadata.uid == before.metadata.uid, name
        assert after.metadata.resource_version == before.metadata.resource_version and after.data == before.data, name
        assert get_token(api, namespace, name)["status"]["phase"] == c.PHASE_VALID, name
    reasons = {e.reason for e in api.core.list_namespaced_event(namespace).items}
    assert "Disconnected" not in reasons and "TokenRevoked" not in reasons
