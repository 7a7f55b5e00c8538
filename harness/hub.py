"""Talk to a running hub like a user does: the login form, the REST API, the lab's API.

Login goes through the HTML form (with the ``_xsrf`` cookie and field, as a browser
sends them), never through the admin API.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import requests
import websocket

from .wait import wait_until


class LoginFailed(AssertionError):
    pass


def page_text(html: str) -> str:
    """What a person reads on an HTML page: no scripts, styles or tags, spaces collapsed."""
    html = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", html)
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


class BrowserSession(requests.Session):
    """A requests session that sends the hub's ``Domain=localhost`` cookie back to the hub.

    With labs at ``<user>.localhost`` the hub sets its session-id cookie for
    ``Domain=localhost``; http.cookiejar stores it but never sends it back (it treats a
    dotless host as ``<host>.local``), and the hub's XSRF tokens depend on it. Before each
    request such a cookie is kept as the hub host's own (not sent to labs' hosts).
    """

    def prepare_request(self, request):
        for cookie in [c for c in self.cookies if c.domain == ".localhost"]:
            self.cookies.clear(cookie.domain, cookie.path, cookie.name)
            cookie.domain, cookie.domain_specified, cookie.domain_initial_dot = (
                "localhost.local", False, False)
            self.cookies.set_cookie(cookie)
        return super().prepare_request(request)


class HubUser:
    """One user's browser-like session with the hub, and their API token."""

    def __init__(self, base_url: str, name: str, verify: bool | str = True):
        self.base = base_url.rstrip("/")
        self.name = name
        # Over HTTPS with a self-signed pair: the certificate file to trust.
        self.verify = verify
        self.http = BrowserSession()
        self.http.verify = verify
        if verify is not True:
            # requests lets REQUESTS_CA_BUNDLE override Session.verify; the hub is on
            # 127.0.0.1, so no environment (proxy, CA) settings are wanted anyway.
            self.http.trust_env = False
        self.token: str | None = None
        # Where the hub serves this user's lab, once known (it does not change).
        self.lab_base: str | None = None

    @classmethod
    def signed_in(cls, base_url: str, name: str, password: str,
                  verify: bool | str = True) -> HubUser:
        """A user logged in through the login form, holding a fresh API token."""
        user = cls(base_url, name, verify=verify)
        user.login(password)
        user.create_token()
        return user

    # --- login form ---------------------------------------------------------
    def login(self, password: str) -> requests.Response:
        page = self.http.get(f"{self.base}/hub/login", timeout=30)
        page.raise_for_status()
        xsrf = self.http.cookies.get("_xsrf", path="/hub/") or self.http.cookies.get("_xsrf")
        resp = self.http.post(
            f"{self.base}/hub/login?next=",
            data={"username": self.name, "password": password, "_xsrf": xsrf},
            allow_redirects=False, timeout=30)
        if resp.status_code != 302 or not any(
                c.name.startswith("jupyterhub-session") or c.name == "jupyterhub-hub-login"
                for c in self.http.cookies):
            raise LoginFailed(f"login of {self.name!r} failed: HTTP {resp.status_code}, "
                              f"cookies {sorted(c.name for c in self.http.cookies)}, "
                              f"page {page_text(resp.text)[:1000]!r}")
        return resp

    def page_xsrf(self) -> str:
        """The session-bound XSRF token the hub's pages hand their JavaScript."""
        page = self.http.get(f"{self.base}/hub/home", timeout=30)
        page.raise_for_status()
        found = re.search(r'xsrf_token: "([^"]+)"', page.text)
        assert found, "no xsrf_token on /hub/home"
        return found.group(1)

    def create_token(self) -> str:
        xsrf = self.page_xsrf()
        resp = self.http.post(f"{self.base}/hub/api/users/{self.name}/tokens",
                              headers={"X-XSRFToken": xsrf or ""},
                              json={"note": "gpuhub integration test", "expires_in": 3600},
                              timeout=30)
        if resp.status_code != 201:
            raise AssertionError(f"token request for {self.name}: {resp.status_code} {resp.text}")
        self.token = resp.json()["token"]
        return self.token

    # --- REST API with the user's own token ---------------------------------
    def api(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = {"Authorization": f"token {token or self.token}"}
        return requests.request(method, f"{self.base}/hub/api{path}", headers=headers,
                                timeout=60, verify=self.verify, **kw)

    def model(self) -> dict:
        resp = self.api("GET", f"/users/{self.name}")
        resp.raise_for_status()
        return resp.json()

    def server(self) -> dict:
        return (self.model().get("servers") or {}).get("", {})

    def start(self, options: dict | None = None) -> requests.Response:
        return self.api("POST", f"/users/{self.name}/server", json=options or {})

    def progress_messages(self, until: str, timeout: float = 60) -> list[str]:
        """The spawn's progress events (what the progress page shows) until one contains
        ``until``, the spawn is ready or it failed, or ``timeout`` seconds pass."""
        messages = []
        deadline = time.monotonic() + timeout
        with requests.get(f"{self.base}/hub/api/users/{self.name}/server/progress",
                          stream=True, headers={"Authorization": f"token {self.token}"},
                          timeout=timeout, verify=self.verify) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    messages.append(event.get("message", ""))
                    if until in messages[-1] or event.get("failed") or event.get("ready"):
                        break
                if time.monotonic() > deadline:
                    break
        return messages

    def start_ready(self, options: dict | None, timeout: float, logs=None) -> dict:
        """Start the lab with ``options``, assert the hub took the request (201 or 202), and
        wait up to ``timeout`` seconds for it to be ready; return the server's model."""
        answer = self.start(options)
        assert answer.status_code in (201, 202), (
            f"start of {self.name}'s lab: HTTP {answer.status_code} {answer.text}"
            + (f"\nhub logs:\n{logs()}" if logs else ""))
        return self.wait_ready(timeout, logs=logs)

    def wait_ready(self, timeout: float, logs=None) -> dict:
        # A short interval: spawn timings are read off this wait.
        return wait_until(lambda: self.server().get("ready") and self.server(), timeout=timeout,
                          interval=0.25, what=f"{self.name}'s lab to be ready",
                          state=self.server, logs=logs)

    def stop(self, timeout: float = 60, logs=None) -> None:
        resp = self.api("DELETE", f"/users/{self.name}/server")
        assert resp.status_code in (202, 204), resp.text
        wait_until(lambda: not self.server(), timeout=timeout, what=f"{self.name}'s lab to stop",
                   state=self.server, logs=logs)

    # --- the lab, through the proxy -----------------------------------------
    def lab_url(self) -> str:
        """Where the hub serves this user's lab: ``<origin>/user/<name>/``, the origin the
        user's own (``<user>.HUB_DOMAIN``) unless labs share the hub's. Asked of the hub
        once, while the lab runs, then kept: the lab answers also while the hub is down."""
        if self.lab_base is None:
            url = self.server().get("url")
            if not url:
                return f"{self.base}/user/{self.name}/"  # no lab: the hub answers there
            self.lab_base = url if url.startswith(("http://", "https://")) else self.base + url
        return self.lab_base

    def lab(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, f"{self.lab_url()}api{path}",
                                headers={"Authorization": f"token {self.token}"},
                                timeout=60, allow_redirects=False, verify=self.verify, **kw)

    def kernel_channels(self, kernel: str) -> str:
        return self.lab_url().replace("http", "ws", 1) + f"api/kernels/{kernel}/channels"

    def run_code(self, code: str, timeout: float = 120) -> str:
        """Execute ``code`` in a new kernel through the lab's API; return its stdout."""
        resp = self.lab("POST", "/kernels", json={"name": "python3"})
        assert resp.status_code == 201, f"kernel start: {resp.status_code} {resp.text[:300]}"
        kernel = resp.json()["id"]
        try:
            return execute(self.kernel_channels(kernel), self.token, code, timeout,
                           verify=self.verify)
        finally:
            self.lab("DELETE", f"/kernels/{kernel}")


    def start_busy_kernel(self, seconds: int) -> str:
        """Start a kernel running ``time.sleep(seconds)``; return its id without waiting."""
        resp = self.lab("POST", "/kernels", json={"name": "python3"})
        assert resp.status_code == 201, f"kernel start: {resp.status_code} {resp.text[:300]}"
        kernel = resp.json()["id"]
        ws = websocket.create_connection(
            self.kernel_channels(kernel), header=[f"Authorization: token {self.token}"],
            timeout=30, sslopt=sslopt(self.verify))
        ws.send(json.dumps(_execute_request(f"import time; time.sleep({seconds})")))
        ws.close()
        return kernel

    def kernel_state(self, kernel: str) -> str:
        resp = self.lab("GET", f"/kernels/{kernel}")
        return resp.json()["execution_state"] if resp.status_code == 200 else f"HTTP {resp.status_code}"


def _execute_request(code: str) -> dict:
    return {
        "header": {"msg_id": uuid.uuid4().hex, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }


def sslopt(verify: bool | str) -> dict:
    """websocket-client's TLS options for requests' ``verify`` (a CA file to trust)."""
    return {"ca_certs": verify} if isinstance(verify, str) else {}


def execute(ws_url: str, token: str, code: str, timeout: float,
            verify: bool | str = True) -> str:
    """Send one execute_request over the kernel's websocket; collect stream output."""
    ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"],
                                     timeout=timeout, sslopt=sslopt(verify))
    request = _execute_request(code)
    msg_id = request["header"]["msg_id"]
    ws.send(json.dumps(request))
    out, error = [], None
    try:
        while True:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                error = "\n".join(msg["content"]["traceback"])
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                break
    finally:
        ws.close()
    if error:
        raise AssertionError(f"code raised in the kernel:\n{error}\nstdout so far: {''.join(out)}")
    return "".join(out)
