"""The connect page in a real browser: Debian's Chromium, headless, driven by Selenium through Debian's
chromedriver (launched by path: no browser or driver download). The browser reaches the connect page through
the platform's authentication proxy, as in production (oauth2-proxy or the like in front of the page): here a
tiny proxy in the test that signs the user in -- it adds the user header and forwards from the trusted source
address. The user opens their UserToken's link, clicks Connect, signs in and consents at the real
authorization server (oidc-provider's login and consent pages), lands on the success page; the UserToken goes
Valid and the page shows it.

The proxy is Chromium's HTTP proxy (--proxy-server) rather than a reverse proxy at another address: the
session operator's base URL, and so the OAuth redirect URI, is the connect page's own address. It adds the
header only to requests for the connect page; the provider's pages pass through untouched."""

from __future__ import annotations

import http.client
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from helpers import Api
from test_user_token import applications, create_token, oidc, oidc_app, ut_spec, wait_phase  # noqa: F401 (fixtures)

from workspace_secrets.api import constants as c

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


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


def test_connect_in_a_real_browser(api, namespace, wso_operator, oidc, applications, auth_proxy, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    create_token(api, namespace, "alice-browser", ut_spec(oidc_app(applications, oidc, "wso")))
    link = wait_phase(api, namespace, "alice-browser", c.PHASE_AWAITING_AUTHORIZATION)["status"]["authorizationURL"]
    wait = WebDriverWait(browser, 20)
    try:
        browser.get(link)
        assert browser.find_element(By.ID, "user").text == "alice"
        browser.find_element(By.CSS_SELECTOR, f"button[data-token='{namespace}/alice-browser']").click()
        # oidc-provider's login page, then its consent page.
        wait.until(EC.presence_of_element_located((By.NAME, "login"))).send_keys("alice")
        browser.find_element(By.NAME, "password").send_keys("any password")
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(EC.presence_of_element_located((By.XPATH, "//button[normalize-space()='Continue']"))).click()
        result = wait.until(EC.presence_of_element_located((By.ID, "result")))
        assert result.get_attribute("data-ok") == "true", result.text
        assert "Connected" in result.text and "alice" in result.text
        status = wait_phase(api, namespace, "alice-browser", c.PHASE_VALID)["status"]
        assert status["login"] == "alice"
        browser.find_element(By.LINK_TEXT, "Back to your accounts").click()
        phase = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "span.phase")))
        assert phase.get_attribute("data-phase") == "Valid"
        assert "alice" in browser.find_element(By.ID, f"{namespace}/alice-browser").text
        assert browser.find_element(By.CSS_SELECTOR, f"button[data-token='{namespace}/alice-browser']").text == "Reconnect"
        assert auth_proxy.requests >= 4  # page, start, callback, page: all through the auth proxy
    finally:
        browser.save_screenshot(str(tmp_path / "connect-page.png"))
