"""HTTPS: a stack of its own serving a pair made by the real `invoke tls-selfsigned`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest
import requests

from harness.hub import HubUser
from harness.stack import ROOT, free_port

SPAWN_TIMEOUT = 180
CAROL = ("carol", "carol-pw-5e1b7c")
# Two labels: a certificate's wildcard (*.hub.localhost, each lab's host) needs them.
DOMAIN = "hub.localhost"


@pytest.fixture(scope="module")
def selfsigned_pair(tmp_path_factory) -> tuple[str, str]:
    """The pair `invoke tls-selfsigned` writes into this test's folder; its printed lines."""
    folder = tmp_path_factory.mktemp("tls")
    settings = folder / "tls.env"
    settings.write_text(f"HUB_DOMAIN={DOMAIN}\n")  # the task adds *.HUB_DOMAIN for the labs
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "tls-selfsigned", "--host", DOMAIN,
         "--host", "127.0.0.1", "--days", "2", "--output", str(folder)],
        cwd=ROOT, env={**os.environ, "GPUHUB_ENV_FILE": str(settings)},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = dict(re.findall(r"^(TLS_CERT|TLS_KEY)=(.+)$", result.stdout, re.MULTILINE))
    assert set(lines) == {"TLS_CERT", "TLS_KEY"}, result.stdout
    assert oct(os.stat(lines["TLS_KEY"]).st_mode & 0o777) == "0o600"
    return lines["TLS_CERT"], lines["TLS_KEY"]


@pytest.fixture(scope="module")
def tls_stack(stack_factory, selfsigned_pair, measure):
    cert, key = selfsigned_pair
    stack = stack_factory(TLS_CERT=cert, TLS_KEY=key, HUB_HTTP_REDIRECT_PORT=str(free_port()),
                          HUB_DOMAIN=DOMAIN)
    started = time.monotonic()
    result = stack.up("--no-build")
    measure("invoke up --no-build with TLS", time.monotonic() - started)
    assert f"gpuhub is up: https://{DOMAIN}:{stack.settings['HUB_PORT']}/" in result.stdout
    return stack


@pytest.fixture(scope="module")
def https_url(tls_stack) -> str:
    return f"https://{DOMAIN}:{tls_stack.settings['HUB_PORT']}"


def test_login_over_https_sets_only_secure_cookies(tls_stack, https_url, selfsigned_pair):
    admin = HubUser(https_url, "admin", verify=selfsigned_pair[0])
    admin.login(tls_stack.admin_passwords["admin"])
    cookies = {c.name: c for c in admin.http.cookies}
    assert {"_xsrf", "jupyterhub-session-id", "jupyterhub-hub-login"} <= set(cookies), cookies
    insecure = [name for name, c in cookies.items() if not c.secure]
    assert not insecure, f"cookies without the Secure flag: {insecure}"
    # The certificate is checked: without trusting it, the client refuses the hub.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{https_url}/hub/login", timeout=30)


def test_plain_http_on_the_hub_port_is_not_served(tls_stack):
    try:
        resp = requests.get(f"http://127.0.0.1:{tls_stack.settings['HUB_PORT']}/hub/login",
                            timeout=30, allow_redirects=False)
    except requests.exceptions.ConnectionError:
        return
    assert resp.status_code >= 400, f"plain HTTP answered {resp.status_code} on the HTTPS port"


def test_plain_http_on_the_redirect_port_redirects_to_https(tls_stack, https_url,
                                                            selfsigned_pair):
    redirect = tls_stack.settings["HUB_HTTP_REDIRECT_PORT"]
    resp = requests.get(f"http://{DOMAIN}:{redirect}/hub/login?next=%2Fhub%2Fhome",
                        timeout=30, allow_redirects=False)
    assert resp.status_code in (301, 302, 307, 308), resp.status_code
    assert resp.headers["Location"] == f"{https_url}/hub/login?next=%2Fhub%2Fhome"
    followed = requests.get(f"http://{DOMAIN}:{redirect}/hub/login", timeout=30,
                            verify=selfsigned_pair[0])
    assert followed.status_code == 200 and followed.url.startswith(https_url)


def test_a_lab_spawns_and_answers_through_https(tls_stack, https_url, selfsigned_pair):
    name, password = CAROL
    tls_stack.invoke("adduser", name, "--password-stdin", stdin=password + "\n")
    carol = HubUser.signed_in(https_url, name, password, verify=selfsigned_pair[0])
    carol.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=tls_stack.logs)
    status = carol.lab("GET", "/status")
    assert status.status_code == 200, f"{status.status_code} {status.text[:300]}"
    # The browser path: the lab, on its own origin (carol.hub.localhost, which the
    # certificate covers), does its OAuth round trip with the hub over https:// only; its
    # cookie is Secure and for the lab's host, and the hub's login cookie is for the hub's
    # host only (never sent to a lab).
    lab_origin = f"https://{name}.{DOMAIN}:{tls_stack.settings['HUB_PORT']}"
    assert carol.lab_url() == f"{lab_origin}/user/{name}/"
    page = carol.http.get(f"{carol.lab_url()}lab", timeout=60)
    assert page.status_code == 200, f"{page.status_code} {page.url}"
    hops = [r.url for r in [*page.history, page]]
    assert all(url.startswith((https_url + "/", lab_origin + "/")) for url in hops), hops
    assert page.url.startswith(lab_origin) and any(u.startswith(https_url) for u in hops), hops
    lab_cookies = [c for c in carol.http.cookies if c.name.startswith(f"jupyterhub-user-{name}")]
    assert lab_cookies and all(c.secure for c in lab_cookies), [
        (c.name, c.secure) for c in carol.http.cookies]
    assert {c.domain for c in lab_cookies} == {f"{name}.{DOMAIN}"}, lab_cookies
    hub_login = [c for c in carol.http.cookies if c.name == "jupyterhub-hub-login"]
    assert hub_login and all(c.domain == DOMAIN and not c.domain_specified
                             for c in hub_login), hub_login
    carol.stop(logs=tls_stack.logs)
