"""One browser at the login form, and a flood of them: the attacker's side of the lockout
tests (tests/integration/test_login_lockout.py)."""

from __future__ import annotations

import os
import threading
from collections import Counter

import requests

LOGGED_IN = 0  # what LoginForm.submit answers when the hub granted a session


class LoginForm:
    """One browser at the login form: its own session, and the _xsrf cookie and field, as
    support/hub.py's HubUser.login sends them. The page is fetched first, so that submit()
    is only the POST: guesses released together reach the hub together."""

    def __init__(self, base_url: str, name: str):
        self.base = base_url.rstrip("/")
        self.name = name
        self.http = requests.Session()
        page = self.http.get(f"{self.base}/hub/login", timeout=30)
        page.raise_for_status()
        self.xsrf = self.http.cookies.get("_xsrf", path="/hub/") or self.http.cookies.get("_xsrf")

    def post(self, password: str, timeout: float = 30) -> requests.Response:
        """POST the form; the hub's answer (a refusal's page says why)."""
        return self.http.post(
            f"{self.base}/hub/login?next=",
            data={"username": self.name, "password": password, "_xsrf": self.xsrf},
            allow_redirects=False, timeout=timeout)

    def submit(self, password: str, timeout: float = 30) -> int:
        """POST the form; the HTTP status, or LOGGED_IN when the hub granted a session."""
        resp = self.post(password, timeout)
        logged_in = resp.status_code == 302 and any(
            c.name.startswith("jupyterhub-session") or c.name == "jupyterhub-hub-login"
            for c in self.http.cookies)
        return LOGGED_IN if logged_in else resp.status_code


def guess_flood(url: str, clients: int, answered, stop, results) -> None:
    """The attacker, in a process of its own at a lower CPU priority: its guesses reach the
    hub as fast as the hub answers them, but its client threads do not hold the test's
    Python lock while the normal login is timed, nor outrun the hub for this machine's two
    cores (a real attacker's CPUs are not the hub's)."""
    os.nice(10)
    answers: list[int] = []

    def guess() -> None:
        while not stop.is_set():  # each guess from a new browser, as a bot sends them
            answers.append(LoginForm(url, "floody").submit("wrong-password", timeout=120))
            with answered.get_lock():
                answered.value += 1

    threads = [threading.Thread(target=guess, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=150)
    results.put(dict(Counter(answers)))
