"""gpuhub's LDAP authenticator against a real directory: Debian's slapd on loopback
(tests/support/directory.py), over LDAPS and StartTLS, with a CA the test makes.

No Docker: the authenticator is the hub's own class, configured by hubconfig.update_auth
from validated settings, as in the hub. The hub-level tests (the login form, admin and
GPU limits by group) are in tests/integration/test_login_ldap.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from traitlets.config import Config

from gpuhub.core import names
from gpuhub.core.settings import validate
from gpuhub.hub import hubconfig
from gpuhub.hub.directory import DirectoryUnavailable, LdapAuthenticator, LoginRefused
from support import directory


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    # Every test here needs it (the TLS and lockout checks of the hub's logins).
    directory.require()
    running = directory.start(tmp_path_factory.mktemp("slapd"))
    yield running
    running.stop()


def authenticator(tmp_path, url: str, ca_file, **settings) -> LdapAuthenticator:
    """The hub's LDAP authenticator, configured as update_auth configures it."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / names.LDAP_BIND_PASSWORD_SECRET).write_text(directory.SEARCH_PASSWORD + "\n")
    if ca_file:
        (secrets / names.LDAP_CA_SECRET).write_bytes(ca_file.read_bytes())
    values = {"AUTHENTICATOR": "ldap", "LDAP_URL": url, "LDAP_USER_BASE": directory.PEOPLE,
              "LDAP_GROUP_BASE": directory.GROUPS, "LDAP_BIND_DN": directory.SEARCH_DN,
              "LDAP_BIND_PASSWORD_FILE": "/etc/gpuhub/ldap-bind-password",
              "ALLOWED_GROUPS": "gpu-users", "ADMIN_GROUPS": "lab-admins",
              "ADMIN_USERS": "alice"}
    if ca_file:
        values["LDAP_CA_FILE"] = "/etc/gpuhub/ldap-ca.pem"
    values.update(settings)
    c = Config()
    hubconfig.update_auth(c, validate(values), secrets)
    return LdapAuthenticator(config=c)


def login(auth, name, password):
    return asyncio.run(auth.authenticate(None, {"username": name, "password": password}))


@pytest.fixture
def ldaps(slapd, tmp_path):
    return authenticator(tmp_path, slapd.ldaps_url, slapd.ca_file)


def test_a_user_in_an_allowed_group_logs_in_with_groups(ldaps):
    password = directory.PEOPLE_ENTRIES["alice"][0]
    assert login(ldaps, "alice", password) == {
        "name": "alice", "groups": ["gpu-users", "students"], "admin": True}  # ADMIN_USERS


def test_a_wrong_or_empty_password_is_refused(ldaps):
    assert login(ldaps, "alice", "not-her-password") is None
    # An empty password is an unauthenticated bind, which the directory accepts.
    assert login(ldaps, "alice", "") is None
    assert login(ldaps, "alice", "   ") is None


def test_an_unknown_user_is_refused(ldaps):
    assert login(ldaps, "nobody", "whatever-pw-123") is None


def test_a_login_name_with_filter_characters_matches_nothing(ldaps):
    # Escaped: "*" is not a wildcard, ")(" does not close the filter.
    assert login(ldaps, "*", directory.PEOPLE_ENTRIES["alice"][0]) is None
    assert login(ldaps, "alice)(uid=*", directory.PEOPLE_ENTRIES["alice"][0]) is None


def test_a_locked_account_is_refused_with_the_right_password(ldaps):
    assert login(ldaps, "locked", directory.PEOPLE_ENTRIES["locked"][0]) is None


def test_a_user_outside_the_allowed_groups_is_refused_with_a_message(ldaps):
    with pytest.raises(LoginRefused) as refused:
        login(ldaps, "carol", directory.PEOPLE_ENTRIES["carol"][0])
    assert refused.value.status_code == 403
    assert "carol is not in a group allowed on this hub (gpu-users)" in refused.value.message
    # ...but only once her password was right: a wrong one says nothing about groups.
    assert login(ldaps, "carol", "wrong-password-1") is None


def test_admin_by_group_and_only_while_in_it(ldaps):
    boss = login(ldaps, "boss", directory.PEOPLE_ENTRIES["boss"][0])
    assert boss == {"name": "boss", "groups": ["gpu-users", "lab-admins"], "admin": True}
    jsmith = login(ldaps, "JSmith", directory.PEOPLE_ENTRIES["JSmith"][0])
    assert jsmith["admin"] is False  # False, not None: an admin removed from the group loses it


def test_a_directory_name_is_made_lowercase(ldaps):
    for typed in ("JSmith", "jsmith", "JSMITH"):  # uid matching is case-insensitive
        assert login(ldaps, typed, directory.PEOPLE_ENTRIES["JSmith"][0])["name"] == "jsmith"


def test_a_name_that_cannot_be_a_user_name_is_refused_with_a_message(ldaps):
    with pytest.raises(LoginRefused) as refused:
        login(ldaps, "o.brien", directory.PEOPLE_ENTRIES["o.brien"][0])
    assert "Your account name 'o.brien' cannot be used on this hub" in refused.value.message
    assert "lowercase letters, digits" in refused.value.message


def test_everyone_when_allowed_groups_is_a_star(slapd, tmp_path):
    everyone = authenticator(tmp_path, slapd.ldaps_url, slapd.ca_file, ALLOWED_GROUPS="*")
    assert login(everyone, "carol", directory.PEOPLE_ENTRIES["carol"][0])["groups"] == ["visitors"]


def test_starttls_works_and_the_user_filter_holds(slapd, tmp_path):
    starttls = authenticator(tmp_path, slapd.starttls_url, slapd.ca_file,
                             LDAP_USER_FILTER="(!(uid=alice))")
    assert login(starttls, "JSmith", directory.PEOPLE_ENTRIES["JSmith"][0])["name"] == "jsmith"
    assert login(starttls, "alice", directory.PEOPLE_ENTRIES["alice"][0]) is None


def test_a_certificate_from_another_ca_refuses_every_login(slapd, tmp_path):
    other_ca, _key = directory.make_ca(tmp_path / "other", "someone-else")
    for url in (slapd.ldaps_url, slapd.starttls_url):
        wrong = authenticator(tmp_path, url, other_ca)
        with pytest.raises(DirectoryUnavailable):
            login(wrong, "alice", directory.PEOPLE_ENTRIES["alice"][0])
    # Nor are the public CAs enough for a private one.
    public = authenticator(tmp_path, slapd.ldaps_url, None)
    with pytest.raises(DirectoryUnavailable):
        login(public, "alice", directory.PEOPLE_ENTRIES["alice"][0])


def test_a_certificate_for_another_name_is_refused(slapd, tmp_path):
    # The same server and CA, reached by a name its certificate does not carry.
    wrong_name = authenticator(tmp_path, f"ldaps://localhost:{slapd.ldaps_port}", slapd.ca_file)
    with pytest.raises(DirectoryUnavailable):
        login(wrong_name, "alice", directory.PEOPLE_ENTRIES["alice"][0])


def test_a_directory_that_does_not_answer_refuses_within_the_timeout(tmp_path, monkeypatch, slapd):
    monkeypatch.setattr("gpuhub.hub.directory.RECEIVE_TIMEOUT", 2)
    with socket.socket() as silent:  # accepts the connection, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        accepted = []
        threading.Thread(target=lambda: accepted.append(silent.accept()), daemon=True).start()
        port = silent.getsockname()[1]
        hung = authenticator(tmp_path, f"ldap://127.0.0.1:{port}", slapd.ca_file)
        with pytest.raises(DirectoryUnavailable):
            login(hung, "alice", directory.PEOPLE_ENTRIES["alice"][0])


def test_a_wrong_search_password_refuses_every_login(slapd, tmp_path):
    wrong = authenticator(tmp_path, slapd.ldaps_url, slapd.ca_file)
    wrong.lookup_dn_search_password = "not-the-search-password"
    with pytest.raises(DirectoryUnavailable):
        login(wrong, "alice", directory.PEOPLE_ENTRIES["alice"][0])


def test_logins_beyond_the_lookup_pool_are_answered_429_at_once(tmp_path, monkeypatch, slapd):
    """A directory that hangs holds at most the pool: the next login is told to come back,
    and the hub's event loop is never the one waiting."""
    from gpuhub.hub import directory as hub_directory
    from gpuhub.hub.auth import HashingBusy, HashingPool

    monkeypatch.setattr(hub_directory, "LOOKUPS", HashingPool(workers=2, limit=2))
    monkeypatch.setattr(hub_directory, "CONNECT_TIMEOUT", 3)
    monkeypatch.setattr(hub_directory, "RECEIVE_TIMEOUT", 3)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hung = authenticator(tmp_path, f"ldap://127.0.0.1:{silent.getsockname()[1]}", slapd.ca_file)

        async def three_at_once():
            logins = [asyncio.ensure_future(hung.authenticate(None, {"username": "alice",
                                                                     "password": "x" * 9}))
                      for _ in range(3)]
            loop_free = await asyncio.wait_for(asyncio.sleep(0.2, "free"), timeout=1)
            return loop_free, await asyncio.gather(*logins, return_exceptions=True)

        loop_free, answers = asyncio.run(three_at_once())
    assert loop_free == "free"  # the loop ran other work while two lookups hung
    kinds = sorted(type(a).__name__ for a in answers)
    assert kinds == ["DirectoryUnavailable", "DirectoryUnavailable", "HashingBusy"], answers
    busy = next(a for a in answers if isinstance(a, HashingBusy))
    assert busy.status_code == 429 and busy.headers["Retry-After"]
