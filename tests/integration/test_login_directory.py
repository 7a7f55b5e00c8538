"""Logging in with a directory: a live hub against a real LDAP server (Debian's slapd) and
then a real OpenID Connect provider (oidc-provider), both started by the test on the
gateway of the stack's own directory network (an address of a network the test created),
with TLS from CAs the test makes.

One stack: first AUTHENTICATOR=ldap, then the same hub switched to oidc (as an admin
would switch), so that the hub users the directory made stay and meet the provider's.
"""

from __future__ import annotations

import json
import re
import tarfile

import pytest
import requests

from gpuhub.core import names
from harness.hub import HubUser, LoginFailed
from harness.stack import secret_places
from support import directory, login_stack, oidc
from support.loginform import LOGGED_IN, LoginForm


@pytest.fixture(scope="session", autouse=True)
def _directory_servers_installed():
    """Checked before any image is built: missing, these tests fail, never skip."""
    login_stack.require_servers()


SPAWN_TIMEOUT = 180
PASSWORD = {uid: pw for uid, (pw, _groups) in directory.PEOPLE_ENTRIES.items()}


@pytest.fixture(scope="module")
def dstack(stack_factory, tmp_path_factory):
    folder = tmp_path_factory.mktemp("directory")
    stack = stack_factory(**login_stack.first_settings(folder, GPU_LIMITS="@students=1",
                                                       GPU_LINE_TIMEOUT="0"))
    stack.up("--no-build")
    d = login_stack.DirectoryStack(stack, folder)
    try:
        d.use_ldap()
        yield d
    finally:
        d.stop()
        stack.teardown()


def user_row(stack, name):
    return {u["name"]: u for u in stack.users()}.get(name)


# --- LDAP ------------------------------------------------------------------------------

def test_the_hub_reaches_the_directory_through_its_own_network(dstack):
    hub = dstack.stack.compose("ps", "-q", "hub").stdout.strip()
    networks = dstack.stack.inspect(hub)["NetworkSettings"]["Networks"]
    assert names.directory_network(dstack.stack.project) in networks
    # Its default route too (not the labs network, which the lab firewall limits): a
    # directory elsewhere in the institution's network is reached this way.
    routes = dstack.stack.docker("exec", hub, "cat", "/proc/net/route").stdout.splitlines()[1:]
    default = [r.split() for r in routes if r.split()[1] == "00000000"]
    gateway = ".".join(str(int(default[0][2][i:i + 2], 16)) for i in (6, 4, 2, 0))
    assert gateway == dstack.gateway, routes


def test_a_directory_user_logs_in_through_the_form_with_their_groups(dstack):
    alice = HubUser(dstack.stack.url, "alice")
    alice.login(PASSWORD["alice"])
    row = user_row(dstack.stack, "alice")
    assert row["groups"] == ["gpu-users", "students"] and row["admin"] is False
    assert row["has_password"] is False, "no password of a directory user is kept by the hub"


def test_a_wrong_password_and_a_locked_account_are_refused(dstack):
    with pytest.raises(LoginFailed):
        HubUser(dstack.stack.url, "alice").login("not-alices-password")
    with pytest.raises(LoginFailed):
        HubUser(dstack.stack.url, "locked").login(PASSWORD["locked"])
    assert user_row(dstack.stack, "locked") is None


def test_a_user_outside_the_allowed_groups_is_refused_with_a_message(dstack):
    answer = LoginForm(dstack.stack.url, "carol").post(PASSWORD["carol"], timeout=60)
    assert answer.status_code == 403
    assert "carol is not in a group allowed on this hub (gpu-users)" in answer.text
    assert user_row(dstack.stack, "carol") is None


def test_admin_by_group(dstack):
    HubUser(dstack.stack.url, "boss").login(PASSWORD["boss"])
    assert user_row(dstack.stack, "boss")["admin"] is True


def test_a_name_is_normalised_or_refused_and_never_half_created(dstack):
    form = LoginForm(dstack.stack.url, "JSmith")
    assert form.submit(PASSWORD["JSmith"]) == LOGGED_IN
    assert user_row(dstack.stack, "jsmith")["groups"] == ["gpu-users"]
    answer = LoginForm(dstack.stack.url, "o.brien").post(PASSWORD["o.brien"], timeout=60)
    assert answer.status_code == 403
    assert "Your account name &#39;o.brien&#39; cannot be used on this hub" in answer.text
    assert not [u for u in dstack.stack.users() if "brien" in u["name"]]
    assert "brien" not in dstack.stack.docker("volume", "ls", "-q").stdout


def test_a_gpu_limit_by_directory_group(dstack):
    alice = HubUser.signed_in(dstack.stack.url, "alice", PASSWORD["alice"])  # @students=1
    answer = alice.start({"profile": "gpu2"})
    assert answer.status_code == 409, answer.text
    assert "your limit is 1 GPU(s) per lab" in answer.json()["message"]
    jsmith = HubUser.signed_in(dstack.stack.url, "jsmith", PASSWORD["JSmith"])  # no limit
    jsmith.start_ready({"profile": "gpu2"}, SPAWN_TIMEOUT, logs=dstack.stack.logs)
    jsmith.stop(logs=dstack.stack.logs)


def test_account_tasks_say_where_accounts_live_and_deluser_still_works(dstack):
    stack = dstack.stack
    added = stack.invoke("adduser", "newbie", "--password-stdin", stdin="newbie-pw-12345\n",
                         check=False)
    assert added.returncode == 1
    assert added.stderr.strip().startswith("error: AUTHENTICATOR=ldap: accounts and passwords "
                                           f"live in the directory ({dstack.slapd.ldaps_url})")
    assert stack.invoke("passwd", "alice", "--password-stdin", stdin="x" * 12 + "\n",
                        check=False).returncode == 1
    assert {"alice", "boss", "jsmith"} <= {u["name"] for u in stack.users()}
    assert "deleted user jsmith" in stack.invoke("deluser", "jsmith", "--purge-data").stdout
    assert user_row(stack, "jsmith") is None
    # The directory still has JSmith: the next login makes the hub user again.
    assert LoginForm(stack.url, "jsmith").submit(PASSWORD["JSmith"]) == LOGGED_IN


# --- OpenID Connect ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def provider(dstack):
    return dstack.use_oidc()


def test_oidc_login_with_groups_from_the_claim(dstack, provider):
    alice = HubUser(dstack.stack.url, "alice")
    answer = oidc.log_in(alice.http, dstack.stack.url, provider, "alice")
    assert answer.status_code == 200 and "/hub/" in answer.url, answer.text[-2000:]
    alice.create_token()  # a session of the hub's own
    row = user_row(dstack.stack, "alice")
    assert row["groups"] == ["gpu-users", "students"] and row["admin"] is False


def test_oidc_admin_by_group_and_a_name_made_lowercase(dstack, provider):
    oidc.log_in(requests.Session(), dstack.stack.url, provider, "boss")
    assert user_row(dstack.stack, "boss")["admin"] is True
    oidc.log_in(requests.Session(), dstack.stack.url, provider, "JSmith")
    assert user_row(dstack.stack, "jsmith")["groups"] == ["gpu-users"]


def test_oidc_groups_feed_gpu_limits_and_a_bad_name_is_refused(dstack, provider):
    alice = HubUser(dstack.stack.url, "alice")  # a student in the provider's claim too
    oidc.log_in(alice.http, dstack.stack.url, provider, "alice")
    alice.create_token()
    answer = alice.start({"profile": "gpu2"})
    assert answer.status_code == 409 and "your limit is 1 GPU(s) per lab" in answer.json()["message"]
    refused = oidc.log_in(requests.Session(), dstack.stack.url, provider, "obrien")
    assert refused.status_code == 403
    assert "Your account name &#39;o.brien&#39; cannot be used on this hub" in refused.text
    assert not [u for u in dstack.stack.users() if "brien" in u["name"]]


def test_oidc_refuses_a_user_outside_the_allowed_groups(dstack, provider):
    answer = oidc.log_in(requests.Session(), dstack.stack.url, provider, "carol")
    assert answer.status_code == 403
    assert "Your account is not in a group allowed on this hub (gpu-users)" in answer.text
    assert user_row(dstack.stack, "carol") is None


def test_the_bind_password_and_client_secret_leak_nowhere(dstack, provider, tmp_path):
    stack = dstack.stack
    archive = tmp_path / "backup.tar.gz"
    stack.invoke("backup", "--include-secrets", "--output", str(archive))
    places = secret_places(stack)
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile():
                places[f"backup {member.name}"] = tar.extractfile(member).read().decode(
                    errors="replace")
    leaks = [(where, secret[:6] + "…") for where, text in places.items()
             for secret in (directory.SEARCH_PASSWORD, oidc.CLIENT_SECRET) if secret in text]
    assert not leaks, f"secrets found in: {leaks}"
    assert len(places) > 8, sorted(places)  # the places were really read
    assert any(name.startswith("backup hub/") for name in places), sorted(places)
    # ...while the hub really did read both (the logins above needed them).
    hub = stack.compose("ps", "-q", "hub").stdout.strip()
    mounted = {m["Destination"] for m in stack.inspect(hub)["Mounts"]}
    assert {f"{names.HUB_SECRETS_DIR}/{names.OIDC_CLIENT_SECRET_SECRET}",
            f"{names.HUB_SECRETS_DIR}/{names.LDAP_BIND_PASSWORD_SECRET}"} <= mounted
    assert not re.search(r"LDAP_BIND_PASSWORD=|OIDC_CLIENT_SECRET=", json.dumps(
        stack.inspect(hub)["Config"]["Env"]))
