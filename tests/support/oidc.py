"""A real OpenID Connect provider for the tests: panva's oidc-provider (OpenID Certified),
run with Node.js by tests/support/oidc_provider/provider.mjs, on an address the test owns
(the gateway of the stack's directory network, so that the hub container and the
browser on this host reach the same issuer), over HTTPS with a CA the test makes.

Why this one: it is a maintained, certified provider library that runs from a 60-line
configuration with no database or admin console (Keycloak and Dex are not in Debian and
no image can be pulled here), and npm is reachable. `.ci/provision` installs it
(`npm ci` in tests/support/oidc_provider).

ACCOUNTS are its users and their groups claim. Its login page takes any password: the
hub never sees passwords in this mode, so there is nothing of the hub's to test there.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import requests

from harness import ROOT
from harness.stack import free_port
from support.serverprocess import ServerProcess, port_open
from support.testca import issue, make_ca

PROVIDER_DIR = ROOT / "tests" / "support" / "oidc_provider"
CLIENT_ID = "gpuhub-test"
CLIENT_SECRET = "oidc-client-secret-9c2e71"  # the leak tests look for it everywhere
ACCOUNTS = {
    "alice": {"groups": ["gpu-users", "students"]},
    "boss": {"groups": ["gpu-users", "lab-admins"]},
    "carol": {"groups": ["visitors"]},
    "JSmith": {"groups": ["gpu-users"], "username": "JSmith"},
    "obrien": {"groups": ["gpu-users"], "username": "o.brien"},  # cannot be a user name
}


# Where .ci/provision installs it (outside any checkout, so a fresh clone finds it too).
INSTALLED = Path("/usr/local/lib/gpuhub-test-oidc-provider/node_modules")


def available() -> bool:
    """Node.js and oidc-provider: in this checkout (npm ci here), or as provisioned, which
    this checkout's node_modules then links to (provider.mjs imports it from there)."""
    modules = PROVIDER_DIR / "node_modules"
    if not modules.exists() and not modules.is_symlink() and (INSTALLED / "oidc-provider").is_dir():
        modules.symlink_to(INSTALLED, target_is_directory=True)
    return bool(shutil.which("node")) and (modules / "oidc-provider").is_dir()


@dataclass
class Provider(ServerProcess):
    issuer: str = ""
    ca_file: Path = Path()
    cert: Path = Path()


def start(folder: Path, host: str, redirect_uris: list[str]) -> Provider:
    """Start the provider on ``host`` (a free port), for the hub at ``redirect_uris``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder / "tls", "gpuhub-test-oidc-ca")
    cert, key = issue(folder / "tls", ca, "provider", [host])
    port = free_port()
    issuer = f"https://{host}:{port}"
    config = folder / "provider.json"
    config.write_text(json.dumps({
        "issuer": issuer, "host": host, "port": port,
        "tls": {"cert": str(cert), "key": str(key)},
        "client": {"id": CLIENT_ID, "secret": CLIENT_SECRET, "redirect_uris": redirect_uris},
        "cookie_key": secrets.token_hex(16), "accounts": ACCOUNTS,
    }))
    log = open(folder / "provider.log", "w")
    process = subprocess.Popen(["node", str(PROVIDER_DIR / "provider.mjs"), str(config)],
                               cwd=PROVIDER_DIR, stdout=log, stderr=subprocess.STDOUT)
    provider = Provider(process, folder / "provider.log", issuer, ca[0], cert)

    def answering() -> bool:
        return port_open(host, port) and requests.get(
            f"{issuer}/.well-known/openid-configuration", timeout=5,
            verify=str(ca[0])).json()["issuer"] == issuer

    provider.wait_until_ready(answering, "the OIDC provider to answer", timeout=60)
    return provider


class _Form(HTMLParser):
    """The first form of a page: its action and its inputs' names and values."""

    def __init__(self):
        super().__init__()
        self.action, self.fields = None, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = attrs.get("action")
        elif tag == "input" and attrs.get("name"):
            self.fields.setdefault(attrs["name"], attrs.get("value") or "")


def log_in(http: requests.Session, hub_url: str, provider: Provider, account: str,
           hub_verify=True) -> requests.Response:
    """Log in to the hub with ``account`` at the provider, as a browser does: the hub's
    OAuth login, the provider's login form, back to the hub's callback. The last answer."""
    answer = http.get(f"{hub_url}/hub/oauth_login", timeout=30, allow_redirects=False,
                      verify=hub_verify)
    for _hop in range(10):
        if answer.status_code not in (301, 302, 303, 307):
            if "<form" not in answer.text or not answer.url.startswith(provider.issuer):
                return answer
            form = _Form()
            form.feed(answer.text)
            fields = {**form.fields, "login": account, "password": "any-password"}
            answer = http.post(urljoin(answer.url, form.action), data=fields, timeout=30,
                               allow_redirects=False, verify=str(provider.ca_file))
            continue
        target = urljoin(answer.url, answer.headers["Location"])
        verify = str(provider.ca_file) if target.startswith(provider.issuer) else hub_verify
        answer = http.get(target, timeout=30, allow_redirects=False, verify=verify)
    raise AssertionError(f"the OIDC login of {account} did not end: {answer.status_code} {answer.url}")
