"""Accounts in the browser: a wrong password, logging out, and the admin's user list."""

import pytest
from selenium.webdriver.common.by import By

from harness.wait import wait_until
from support import screenshots

pytestmark = pytest.mark.e2e

# The cookie that makes a browser logged in to the hub.
HUB_LOGIN_COOKIE = "jupyterhub-hub-login"


def test_wrong_password_shows_the_error_and_starts_no_session(browser, users):
    alice = browser("alice")
    alice.submit_login("alice", users["alice"] + "-wrong")
    error = alice.wait_for(".login_error", "the login error message")
    assert "invalid" in error.text.lower(), f"unexpected login error text: {error.text!r}"
    assert "/hub/login" in alice.driver.current_url
    assert HUB_LOGIN_COOKIE not in alice.cookies(), alice.cookies()
    alice.open("/hub/home")
    alice.wait_at("/hub/login", "/hub/home to send a stranger back to the login page")


def test_logging_out_ends_the_session(browser, users):
    alice = browser("alice")
    alice.login("alice", users["alice"])
    assert HUB_LOGIN_COOKIE in alice.cookies()
    alice.driver.find_element(By.ID, "logout").click()
    alice.wait_for("#username_input", "the login form after logging out")
    assert HUB_LOGIN_COOKIE not in alice.cookies(), alice.cookies()
    alice.open("/hub/home")
    alice.wait_at("/hub/login", "/hub/home to ask for a login again after logging out")


def test_admin_page_lists_every_user(browser, users):
    admin = browser("admin")
    admin.login("admin", users["admin"])
    admin.open("/hub/admin")
    body = admin.wait_for("body", "the admin page")
    wait_until(lambda: all(name in body.text for name in users), timeout=30, interval=0.25,
               what=f"the admin page to list {sorted(users)}", state=admin.where)
    screenshots.save(admin.driver, "admin-page")  # docs/images, with GPUHUB_DOCS_SCREENSHOTS=1
