"""Users through the real tasks: created, listed, changed, deleted; bad input refused."""

import json
import socket
import time

import pytest

from harness.hub import HubUser, LoginFailed
from harness.stack import secret_places
from support.tasks import assert_one_line_error


def test_up_prints_each_admin_password_once_and_it_works(stack):
    assert set(stack.admin_passwords) == {"admin"}, stack.admin_passwords
    HubUser(stack.url, "admin").login(stack.admin_passwords["admin"])
    again = stack.up("--no-build")
    assert "password" not in again.stdout, again.stdout
    admin = [u for u in stack.users() if u["name"] == "admin"]
    assert admin and admin[0]["admin"] is True, admin


def test_adduser_creates_users_who_can_log_in(stack, users, login):
    listed = {u["name"]: u for u in stack.users()}
    for name in users:
        assert name in listed and listed[name]["admin"] is False, listed
        login(name)


def test_adduser_admin_flag(stack):
    stack.invoke("adduser", "carol", "--admin", "--password-stdin", stdin="carol-pw-1234\n")
    try:
        carol = {u["name"]: u for u in stack.users()}["carol"]
        assert carol["admin"] is True
    finally:
        stack.invoke("deluser", "carol")


def test_wrong_password_isassert_one_line_error(stack, users):
    with pytest.raises(LoginFailed):
        HubUser(stack.url, "alice").login("not-alices-password")


def test_passwd_changes_the_password(stack, users):
    stack.invoke("adduser", "dave", "--password-stdin", stdin="dave-old-pw-1\n")
    try:
        stack.invoke("passwd", "dave", "--password-stdin", stdin="dave-new-pw-2\n")
        HubUser(stack.url, "dave").login("dave-new-pw-2")
        with pytest.raises(LoginFailed):
            HubUser(stack.url, "dave").login("dave-old-pw-1")
    finally:
        stack.invoke("deluser", "dave")


def test_deluser_removes_login_and_purge_removes_the_work_volume(stack):
    stack.invoke("adduser", "erin", "--password-stdin", stdin="erin-pw-12345\n")
    volume = f"{stack.project}-home-erin"
    stack.docker("volume", "create", volume)
    stack.invoke("deluser", "erin")
    assert "erin" not in {u["name"] for u in stack.users()}
    with pytest.raises(LoginFailed):
        HubUser(stack.url, "erin").login("erin-pw-12345")
    assert stack.docker("volume", "inspect", volume, check=False).returncode == 0, \
        "deluser without --purge-data must keep the work folder"
    # Same name again (knowingly: the kept folder goes to the new erin), then --purge-data.
    stack.invoke("adduser", "erin", "--reuse-data", "--password-stdin", stdin="erin-pw-12345\n")
    out = stack.invoke("deluser", "erin", "--purge-data")
    assert "removed work volume" in out.stdout, out.stdout
    assert stack.docker("volume", "inspect", volume, check=False).returncode != 0


BAD_NAMES = ["Alice", "two words", "../x", "x" * 300, "", "9lives", "bob;rm", "zoë"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_adduser_refuses_names_jupyterhub_would_reject_or_rename(stack, users, name):
    before = stack.users()
    result = stack.invoke("adduser", name, "--password-stdin", stdin="good-password-1\n",
                          check=False)
    assert_one_line_error(result, "invalid user name")
    assert stack.users() == before


@pytest.mark.parametrize("args, stdin, words", [
    (["adduser", "alice", "--password-stdin"], "whatever-pw-1\n", ["already exists"]),
    (["adduser", "frank", "--password-stdin"], "\n", ["empty"]),
    (["adduser", "frank", "--password-stdin"], "short\n", ["too short"]),
    (["adduser", "frank", "--password-stdin"], "password\n", ["common"]),
    (["adduser", "frank"], "", ["no terminal", "--password-stdin"]),
    (["deluser", "nobody"], None, ["no user 'nobody'"]),
    (["passwd", "nobody", "--password-stdin"], "whatever-pw-1\n", ["no user 'nobody'"]),
])
def test_bad_requests_are_refused_with_one_line_and_change_nothing(stack, users, args, stdin, words):
    before = stack.users()
    assert_one_line_error(stack.invoke(*args, stdin=stdin, check=False), *words)
    assert stack.users() == before


def test_user_tasks_refuse_while_the_stack_is_down(stack_factory):
    down = stack_factory()  # settings written, never started
    result = down.invoke("adduser", "gina", "--password-stdin", stdin="gina-pw-12345\n",
                         check=False)
    assert_one_line_error(result, "not running", "invoke up")


def test_docker_not_running_is_one_clear_line(stack):
    result = stack.invoke("up", "--no-build", check=False,
                          env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert_one_line_error(result, "Docker is not running")


def test_port_in_use_is_refused_before_anything_is_created(stack_factory):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        other = stack_factory(HUB_PORT=str(port))
        result = other.invoke("up", "--no-build", check=False)
    assert_one_line_error(result, f"port {port}", "HUB_PORT")
    assert other.compose("ps", "-aq").stdout.strip() == ""


def test_invalid_setting_stops_before_docker(stack_factory):
    bad = stack_factory(HUB_PORT="99999")
    result = bad.invoke("up", "--no-build", check=False)
    assert_one_line_error(result, "HUB_PORT='99999'", "65535")


def test_users_and_gpu_inventory_survive_a_hand_run_force_recreate(stack, users):
    def gpus():  # the inventory and its holders (utilisation changes by the second)
        return [(r["uuid"], r["model"], r["held_by"], r["since"])
                for r in json.loads(stack.invoke("gpus", "--json").stdout)]

    before = gpus()
    old_id = stack.compose("ps", "-q", "hub").stdout.strip()
    # Run by hand, as an admin might: compose knows nothing of the GPU inventory.
    recreate = stack.compose("up", "-d", "--force-recreate", "--wait")
    assert recreate.returncode == 0, recreate.stderr
    assert stack.compose("ps", "-q", "hub").stdout.strip() != old_id, "hub was not recreated"
    alice = HubUser.signed_in(stack.url, "alice", users["alice"])
    HubUser(stack.url, "admin").login(stack.admin_passwords["admin"])
    assert gpus() == before
    # docker-proxy, recreated without the inventory too, still allows its GPUs.
    alice.start_ready({"profile": "gpu1"}, 180, logs=stack.logs)
    try:
        [request] = stack.inspect(stack.lab_container("alice"))["HostConfig"]["DeviceRequests"]
        assert len(request["DeviceIDs"]) == 1 and request["DeviceIDs"][0] in {b[0] for b in before}
    finally:
        alice.stop(logs=stack.logs)


def test_invoke_compose_runs_compose_with_ups_files_and_variables(stack):
    hub = stack.compose("ps", "-q", "hub").stdout.strip()
    ps = stack.invoke("compose", "--", "ps", "-q", "hub")
    assert hub and ps.stdout.strip() == hub, ps.stdout  # compose's output alone on stdout
    config = json.loads(stack.invoke("compose", "--", "config", "--format", "json").stdout)
    services = config["services"]
    inventory = json.loads(services["docker-proxy"]["environment"]["GPUHUB_GPU_INVENTORY"])
    assert [g["uuid"] for g in inventory] == [g["uuid"] for g in json.loads(
        stack.invoke("gpus", "--json").stdout)]
    # Labs apart: the hub's fixed address on the labs network, as `invoke up` gave it.
    assert services["hub"]["networks"]["labs"]["ipv4_address"] == stack.inspect(hub)[
        "NetworkSettings"]["Networks"][f"{stack.project}-labs"]["IPAMConfig"]["IPv4Address"]
    assert services["lab-memory"]["environment"]["GPUHUB_LABS_CGROUP_PARENT"]
    failed = stack.invoke("compose", "--", "no-such-command", check=False)
    assert failed.returncode != 0 and "no-such-command" in failed.stderr


def test_repeated_failed_logins_lock_the_account(stack):
    # NativeAuthenticator's documented defaults are not its real ones (lockout ~0 s);
    # gpuhub sets LOGIN_MAX_FAILURES=5 and LOGIN_LOCKOUT_SECONDS=600 explicitly.
    stack.invoke("adduser", "locky", "--password-stdin", stdin="locky-pw-12345\n")
    try:
        for _ in range(5):
            with pytest.raises(LoginFailed):
                HubUser(stack.url, "locky").login("wrong-password")
        with pytest.raises(LoginFailed):
            HubUser(stack.url, "locky").login("locky-pw-12345")
    finally:
        stack.invoke("deluser", "locky")


def test_passwords_never_reach_logs_process_lists_or_docker_inspect(stack, users):
    secrets = [*users.values(), stack.admin_passwords["admin"]]
    places = secret_places(stack)
    leaks = [(where, secret[:3] + "…") for where, text in places.items()
             for secret in secrets if secret in text]
    assert not leaks, f"passwords found in: {leaks}"


def test_the_lockout_lasts_as_configured_and_then_ends(stack_factory):
    short = stack_factory(LOGIN_MAX_FAILURES="2", LOGIN_LOCKOUT_SECONDS="3")
    short.up("--no-build")
    short.invoke("adduser", "lena", "--password-stdin", stdin="lena-pw-12345\n")
    for _ in range(2):
        with pytest.raises(LoginFailed):
            HubUser(short.url, "lena").login("wrong-password")
    locked_at = time.monotonic()
    with pytest.raises(LoginFailed):
        HubUser(short.url, "lena").login("lena-pw-12345")
    time.sleep(max(0.0, 4.5 - (time.monotonic() - locked_at)))  # the lockout itself is the subject
    HubUser(short.url, "lena").login("lena-pw-12345")
    short.teardown()


def test_a_new_user_never_silently_gets_a_deleted_users_work_volume(stack):
    volume = f"{stack.project}-home-fay"
    stack.invoke("adduser", "fay", "--password-stdin", stdin="fay-pw-12345\n")
    stack.docker("volume", "create", volume)  # as fay's first lab makes it
    stack.invoke("deluser", "fay")
    assert stack.docker("volume", "inspect", volume, check=False).returncode == 0

    # The same name for someone new: refused before anything is created, both ways out named.
    refused = stack.invoke("adduser", "fay", "--password-stdin", stdin="new-fay-pw-123\n",
                           check=False)
    assert_one_line_error(refused, f"work volume {volume} already exists", "invoke adduser fay --reuse-data",
             "invoke deluser fay --purge-data", f"docker volume rm {volume}")
    assert "fay" not in {u["name"] for u in stack.users()}
    assert stack.docker("volume", "inspect", volume, check=False).returncode == 0

    # Knowingly: --reuse-data hands the folder over, and says so.
    given = stack.invoke("adduser", "fay", "--reuse-data", "--password-stdin",
                         stdin="new-fay-pw-123\n")
    assert f"fay now has the work volume {volume}" in given.stdout, given.stdout
    HubUser(stack.url, "fay").login("new-fay-pw-123")

    # Or the other way out: delete the kept folder (the user is gone), then the name is free.
    stack.invoke("deluser", "fay")
    purged = stack.invoke("deluser", "fay", "--purge-data")
    assert f"no user fay any more; removed work volume {volume}" in purged.stdout, purged.stdout
    assert stack.docker("volume", "inspect", volume, check=False).returncode != 0
    fresh = stack.invoke("adduser", "fay", "--password-stdin", stdin="fay-pw-67890\n")
    assert "now has" not in fresh.stdout, fresh.stdout
    stack.invoke("deluser", "fay", "--purge-data")
