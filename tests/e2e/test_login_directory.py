"""Logging in through the browser with a directory: the hub's login form against a real
LDAP server, then the hub's "Sign in" button through a real OpenID Connect provider's
login page and back (support.login_stack starts both on the stack's directory network).
"""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

from harness.wait import wait_until
from support import directory, login_stack
from support.browser import HubBrowser, chromium
from support.testca import spki_hash

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="session", autouse=True)
def _directory_servers_installed():
    """Checked before any image is built: missing, these tests fail, never skip."""
    login_stack.require_servers()


@pytest.fixture(scope="module")
def dstack(stack_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e-directory")
    stack = stack_factory(**login_stack.first_settings(folder))
    stack.up("--no-build")
    d = login_stack.DirectoryStack(stack, folder)
    try:
        yield d
    finally:
        d.stop()
        stack.teardown()


def open_browser(dstack, tmp_path, label, extra_flags=()):
    # The browser also reaches the directory network's gateway, where the provider is.
    driver = chromium(tmp_path / f"chromium-{label}", extra_flags, also_reach=(dstack.gateway,))
    return HubBrowser(driver, dstack.stack.url, label, logs=dstack.stack.logs)


def logged_in_as(browser: HubBrowser, name: str):
    return wait_until(lambda: "/hub/login" not in browser.driver.current_url
                      and browser.driver.find_elements(By.ID, "logout")
                      and name in browser.driver.page_source,
                      timeout=60, interval=0.25, what=f"{name} to be logged in",
                      state=browser.where, logs=browser.logs)


def test_an_ldap_user_logs_in_through_the_browser(dstack, tmp_path):
    dstack.use_ldap()
    browser = open_browser(dstack, tmp_path, "ldap-jsmith")
    try:
        # The directory's JSmith, typed as the directory spells it: the hub's jsmith.
        browser.submit_login("JSmith", directory.PEOPLE_ENTRIES["JSmith"][0])
        logged_in_as(browser, "jsmith")
    finally:
        browser.driver.quit()


def test_an_oidc_user_logs_in_through_the_providers_page(dstack, tmp_path):
    provider = dstack.use_oidc()
    # Chromium trusts just the provider's certificate (the test's own CA signed it).
    trust = f"--ignore-certificate-errors-spki-list={spki_hash(provider.cert)}"
    browser = open_browser(dstack, tmp_path, "oidc-boss", (trust,))
    try:
        browser.open("/hub/login")
        browser.wait_for("a.btn-jupyter, a[href*='oauth_login']", "the sign-in button").click()
        browser.wait_at(provider.issuer, "the provider's login page")
        browser.wait_for("input[name=login]", "the provider's login form").send_keys("boss")
        browser.driver.find_element(By.CSS_SELECTOR, "input[name=password]").send_keys("any")
        browser.driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        logged_in_as(browser, "boss")
        # Admin by the provider's groups claim: the admin page is open to boss.
        browser.open("/hub/admin")
        browser.wait_for("#react-admin-hook", "the admin page (403 for a non-admin)",
                         visible=False)
        assert "/hub/admin" in browser.driver.current_url
    finally:
        browser.driver.quit()
