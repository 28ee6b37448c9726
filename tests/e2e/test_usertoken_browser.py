"""The connect page in a real browser: Debian's Chromium, headless, driven by Selenium through Debian's
chromedriver (launched by path: no browser or driver download). The user opens their UserToken's link,
clicks Connect, signs in and consents at the real authorization server (oidc-provider's login and consent
pages), lands on the success page; the UserToken goes Valid and the page shows it."""

from __future__ import annotations

import shutil

import pytest
from helpers import Api
from test_usertoken import CLIENT_SECRET, create_token, oidc, oidc_spec, wait_phase  # noqa: F401 (oidc: fixture)

from workspace_secrets.api import constants as c

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


@pytest.fixture
def browser(tmp_path):
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Chromium and chromedriver are needed: run hack/install-system-deps.sh")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_connect_in_a_real_browser(api, namespace, wso_operator, oidc, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    api.create_secret(namespace, "oauth-client", {"client-id": b"wso", "client-secret": CLIENT_SECRET.encode()})
    create_token(api, namespace, "alice-browser", oidc_spec(oidc))
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
    finally:
        browser.save_screenshot(str(tmp_path / "connect-page.png"))
