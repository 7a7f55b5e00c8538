"""Labs: spawn through the REST API, run code in a kernel, keep files, stay private."""

import time

import pytest

SPAWN_TIMEOUT = 180


@pytest.fixture(scope="module")
def alice_lab(stack, users, measure):
    from harness.hub import HubUser

    alice = HubUser.signed_in(stack.url, "alice", users["alice"])
    started = time.monotonic()
    alice.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    measure("one spawn (REST start to ready)", time.monotonic() - started)
    return alice


def test_lab_runs_code_as_the_lab_user_with_an_owned_work_folder(alice_lab):
    out = alice_lab.run_code(
        "import os; print(os.getuid(), os.stat('/home/jovyan/work').st_uid, os.getcwd())")
    uid, work_owner, cwd = out.split()
    assert uid != "0", "labs must not run as root"
    assert work_owner == uid, f"work folder owned by uid {work_owner}, lab user is {uid}"
    assert cwd == "/home/jovyan"


def test_labs_run_the_pinned_patched_jupyter_server_and_lab(alice_lab):
    """Whatever the base image had: the versions gpuhub/core/constraints.txt pins, with their fixes."""
    from gpuhub.core.versions import pinned

    out = alice_lab.run_code(
        "from importlib.metadata import version\n"
        "print(*(version(p) for p in ('jupyter-server', 'jupyterlab', 'jupyterhub')))")
    assert out.split() == [pinned("jupyter-server"), pinned("jupyterlab"), pinned("jupyterhub")]
    server, lab = (tuple(int(x) for x in v.split(".")[:3]) for v in out.split()[:2])
    assert server >= (2, 20, 0) and lab >= (4, 5, 7), out


def test_lab_container_is_configured_as_settings_say(stack, alice_lab):
    info = stack.inspect(stack.lab_container("alice"))
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void", "a CPU-only lab must see no GPU"
    assert info["Config"]["Labels"]["gpuhub.project"] == stack.project
    assert info["Config"]["Labels"]["gpuhub.user"] == "alice"
    assert f"{stack.project}-labs" in info["NetworkSettings"]["Networks"]
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/home/jovyan/work"]["Name"] == f"{stack.project}-home-alice"
    # Not removed by Docker when it exits: the hub reads why it stopped, then removes it.
    assert info["HostConfig"]["AutoRemove"] is False
    assert info["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")
    host = info["HostConfig"]
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["CapDrop"] == ["ALL"] and host["PidsLimit"] == 1024
    assert not any("docker.sock" in m.get("Source", "") for m in info["Mounts"])
    assert not any(m.get("Name", "").endswith("_hub-data") for m in info["Mounts"]), \
        "labs must not see the hub's state (database, secrets)"


def test_one_user_cannot_use_another_users_lab(stack, users, alice_lab):
    from harness.hub import HubUser

    bob = HubUser.signed_in(stack.url, "bob", users["bob"])
    # The hub answers 404 rather than 403 so a token cannot even probe who exists.
    assert bob.api("POST", "/users/alice/server").status_code in (403, 404)
    assert bob.api("DELETE", "/users/alice/server").status_code in (403, 404)
    assert alice_lab.server().get("ready"), "alice's lab must be untouched"
    bob_on_alice = HubUser(stack.url, "alice")
    bob_on_alice.token, bob_on_alice.lab_base = bob.token, alice_lab.lab_url()
    status = bob_on_alice.lab("GET", "/contents").status_code
    assert status in (403, 404), f"bob's token reached alice's lab: HTTP {status}"


def test_work_folder_and_password_survive_down_and_up(stack, users, alice_lab, measure):
    resp = alice_lab.lab("PUT", "/contents/work/kept.txt",
                         json={"type": "file", "format": "text", "content": "still here"})
    assert resp.status_code in (200, 201), resp.text
    stack.invoke("down")
    assert stack.docker("ps", "-q", "--filter", f"name={stack.lab_container('alice')}").stdout == ""
    started = time.monotonic()
    result = stack.up("--no-build")
    measure("invoke up --no-build after down (warm)", time.monotonic() - started)
    assert "password" not in result.stdout, "admin must not be re-created"

    from harness.hub import HubUser

    again = HubUser.signed_in(stack.url, "alice", users["alice"])
    again.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    out = again.run_code("print(open('/home/jovyan/work/kept.txt').read())")
    assert out.strip() == "still here"
    again.stop(logs=stack.logs)

