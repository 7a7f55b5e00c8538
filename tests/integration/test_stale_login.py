"""A login form whose XSRF token no longer matches gets the login page back, with a message.

JupyterHub refuses such a form (403) and shows the refusal on the login page, which its
error handler renders synchronously. NativeAuthenticator's login page takes no part in that
(on JupyterHub 5.4.4 and 5.5.4 alike): "TypeError: LoginHandler._render() got an unexpected
keyword argument 'sync'" in the hub log, after "Uncaught exception in write_error", and an
empty 403 for the user. Both ways a form goes stale are posted, from a browser's position:
its _xsrf cookie expired (an anonymous one lasts an hour) under a form loaded earlier, and
a form from another browser session.
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from harness.wait import wait_until

# What a browser sends with a form it submits (JupyterHub words its refusal for these).
FORM_SUBMIT = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Site": "same-origin",
               "Sec-Fetch-Dest": "document"}
REFUSED = "Login form invalid or expired. Try again."  # JupyterHub's own words


def form_xsrf(html: str) -> str:
    found = re.search(r'<input[^>]*name="_xsrf"[^>]*value="([^"]+)"', html)
    assert found, f"no _xsrf field in the page: {html[:500]!r}"
    return found.group(1)


class Browser:
    """One browser at the hub's login page: its own cookies and User-Agent."""

    def __init__(self, base_url: str, agent: str):
        self.base = base_url.rstrip("/")
        self.http = requests.Session()
        self.http.headers.update({**FORM_SUBMIT, "User-Agent": agent})

    def open_login(self) -> str:
        """GET the login page; the _xsrf field of its form."""
        page = self.http.get(f"{self.base}/hub/login", timeout=30)
        page.raise_for_status()
        return form_xsrf(page.text)

    def submit(self, xsrf: str, username: str, password: str) -> requests.Response:
        return self.http.post(f"{self.base}/hub/login?next=",
                              data={"username": username, "password": password, "_xsrf": xsrf},
                              allow_redirects=False, timeout=30)

    def logged_in(self) -> bool:
        return any(c.name.startswith("jupyterhub-session") or c.name == "jupyterhub-hub-login"
                   for c in self.http.cookies)


def expired_cookie(stack, browser: Browser) -> str:
    """The form's field, after the browser dropped its _xsrf cookie."""
    field = browser.open_login()
    loaded = int(time.time())
    browser.http.cookies.clear()
    # The hub signs tokens to the second: the one it makes now is not the form's.
    wait_until(lambda: int(time.time()) > loaded, timeout=3, interval=0.05,
               what="the clock to pass the second the form was loaded in")
    return field


def another_session(stack, browser: Browser) -> str:
    """This browser's cookie, with the field of a form another browser loaded."""
    browser.open_login()
    return Browser(stack.url, "gpuhub-test-another-browser/1").open_login()


@pytest.mark.parametrize("stale", [expired_cookie, another_session], ids=lambda f: f.__name__)
def test_a_stale_login_form_gets_the_login_page_with_a_message(stack, users, stale):
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
    browser = Browser(stack.url, "gpuhub-test-stale-form/1")
    refused = browser.submit(stale(stack, browser), "alice", users["alice"])

    assert refused.status_code == 403 and not browser.logged_in(), (
        f"HTTP {refused.status_code}: {refused.text[:500]!r}\n{stack.logs()}")
    page = refused.text
    assert REFUSED in page and 'name="password"' in page, (
        f"not the login page with the refusal: {page[:1000]!r}\n{stack.logs()}")
    hub_log = stack.compose("logs", "--no-color", "--since", since, "hub").stdout
    assert "XSRF error on login form" in hub_log, f"not the hub's refusal:\n{hub_log}"
    assert "TypeError" not in hub_log and "Uncaught exception" not in hub_log, hub_log

    # The page it got is a working form: the user logs in from it.
    again = browser.submit(form_xsrf(page), "alice", users["alice"])
    assert again.status_code == 302 and browser.logged_in(), (
        f"the login page after a stale form did not log in: HTTP {again.status_code} "
        f"{again.text[:500]!r}")
