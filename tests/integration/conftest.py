"""Integration tier: a real stack, reached over HTTP and the Hub REST API."""

import shutil
import signal
import subprocess

import pytest
import requests

from harness.hub import HubUser
from harness.stack import free_port
from harness.wait import wait_until

PASSWORDS = {"alice": "alice-pw-8c1f2e", "bob": "bob-pw-77d0a9"}


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def users(stack):
    """alice and bob, created with the real `invoke adduser --password-stdin`."""
    for name, password in PASSWORDS.items():
        stack.invoke("adduser", name, "--password-stdin", stdin=password + "\n")
    return PASSWORDS


@pytest.fixture
def login(stack, users):
    def make(name: str, password: str | None = None) -> HubUser:
        user = HubUser(stack.url, name)
        user.login(password or users[name])
        return user
    return make


@pytest.fixture
def prometheus(stack, tmp_path):
    """A real Prometheus (Debian's), on loopback, scraping the stack every second with
    the config `invoke metrics-config` prints."""
    binary = shutil.which("prometheus")
    if not binary:
        pytest.fail("these tests need Debian's prometheus package (`.ci/provision` installs it)")
    config = stack.invoke("metrics-config", "--host", "127.0.0.1").stdout
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n" + config)
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"))
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/-/ready", timeout=2).ok, timeout=60,
               what="Prometheus ready", logs=lambda: (tmp_path / "prometheus.log").read_text())
    yield url, tmp_path / "prometheus.log"
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
