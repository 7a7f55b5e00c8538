"""Integration tier: a real stack, reached over HTTP and the Hub REST API."""

import pytest

from harness.hub import HubUser

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
