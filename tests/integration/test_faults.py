"""Faults a production hub must survive, on a stack of its own (4 fake GPUs).

Hub restarted or SIGKILLed while labs run and a kernel is busy; a lab killed from
outside; spawns that fail (exits at once, image gone, out of memory at start).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from harness.hub import HubUser
from harness.stack import Stack, settings_from_env
from harness.wait import wait_until

SPAWN_TIMEOUT = 60
FAULT_PROFILES = """
- {display_name: CPU only, slug: cpu, gpus: 0, default: true}
- {display_name: 1 GPU, slug: gpu1, gpus: 1}
- {display_name: Exits at once, slug: exits, gpus: 1, image: "%(exits)s"}
- {display_name: Image gone, slug: gone, gpus: 1, image: "%(gone)s"}
- {display_name: Too little memory, slug: oom, gpus: 1, mem_limit: 8M}
"""


@pytest.fixture(scope="module")
def fault_stack(stack_factory, tmp_path_factory):
    # The lab image the test stacks use (GPUHUB_TEST_LAB_IMAGE may name another tag).
    lab_image = settings_from_env().get("LAB_IMAGE", "gpuhub-lab:test")
    suffix = os.urandom(3).hex()
    images = {"exits": f"gpuhubtest-exits:{suffix}", "gone": f"gpuhubtest-gone:{suffix}"}
    workdir = tmp_path_factory.mktemp("faults")
    dockerfile = workdir / "Dockerfile.exits"
    dockerfile.write_text(f"FROM {lab_image}\nCMD [\"false\"]\n")
    helper = Stack(workdir=workdir, settings={})
    helper.docker("build", "-q", "-t", images["exits"], "-f", str(dockerfile), str(workdir))
    helper.docker("tag", lab_image, images["gone"])
    profiles = workdir / "profiles.yaml"
    profiles.write_text(FAULT_PROFILES % images)
    stack = stack_factory(PROFILES_FILE=str(profiles), SPAWN_TIMEOUT=str(SPAWN_TIMEOUT),
                          LAB_IMAGE=lab_image)
    stack.up("--no-build")
    yield stack
    helper.docker("rmi", "-f", *images.values(), check=False)


@pytest.fixture(scope="module")
def fault_users(fault_stack):
    users = {}
    names = ("ann", "ben", "cat", "dan")
    fault_stack.add_users({name: f"{name}-pw-12345" for name in names})
    for name in names:
        users[name] = HubUser.signed_in(fault_stack.url, name, f"{name}-pw-12345")
    return users


def _holders(stack) -> dict:
    return {row["gpu"]: row["held_by"] for row in json.loads(stack.invoke("gpus", "--json").stdout)}


def _lab_ids(stack) -> set[str]:
    return set(stack.docker("ps", "-q", "--filter", f"label=gpuhub.project={stack.project}").stdout.split())


def test_hub_restart_and_crash_keep_labs_sessions_and_gpu_holders(fault_stack, fault_users):
    stack = fault_stack
    running = [fault_users[n] for n in ("ann", "ben", "cat")]
    for user in running:
        assert user.start({"profile": "gpu1"}).status_code in (201, 202)
    for user in running:
        user.wait_ready(SPAWN_TIMEOUT, logs=stack.logs)
    busy = running[0].start_busy_kernel(600)
    wait_until(lambda: running[0].kernel_state(busy) == "busy", timeout=30,
               what="the kernel to be busy", state=lambda: running[0].kernel_state(busy))
    # Open sessions: each user has just used their lab (the lab caches the token check).
    for user in running:
        assert user.lab("GET", "/status").status_code == 200
    labs, holders = _lab_ids(stack), _holders(stack)
    assert len(labs) == 3 and sum(bool(h) for h in holders.values()) == 3, holders

    # 1. A clean restart.
    stack.invoke("restart")
    for user in running:
        assert user.lab("GET", "/status").status_code == 200
    # 2. A crash: SIGKILL the hub process from the host; the restart policy brings it back.
    hub = stack.compose("ps", "-q", "hub").stdout.strip()
    pid = int(stack.docker("inspect", "-f", "{{.State.Pid}}", hub).stdout)
    os.kill(pid, signal.SIGKILL)
    # While the hub is down, the proxy still serves the open sessions.
    assert running[1].lab("GET", "/status").status_code == 200
    wait_until(lambda: stack.docker("inspect", "-f", "{{.State.Health.Status}} {{.RestartCount}}",
                                    hub).stdout.split() == ["healthy", "1"],
               timeout=120, interval=1, what="the hub to come back after SIGKILL",
               state=lambda: stack.docker("inspect", "-f", "{{.State.Status}}", hub).stdout,
               logs=stack.logs)

    assert _lab_ids(stack) == labs, "labs must be neither lost nor duplicated"
    assert _holders(stack) == holders
    for user in running:
        assert user.server().get("ready"), user.server()
        assert user.lab("GET", "/status").status_code == 200
    assert running[0].kernel_state(busy) == "busy", "the busy kernel must survive"
    # A new GPU spawn gets the one free GPU, not a held one.
    dan = fault_users["dan"]
    dan.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=stack.logs)
    after = _holders(stack)
    assert sorted(sum(after.values(), [])) == ["ann", "ben", "cat", "dan"], after
    dan.stop(logs=stack.logs)


def test_a_lab_killed_from_outside_is_noticed_and_can_start_again(fault_stack, fault_users):
    stack, ben = fault_stack, fault_users["ben"]
    assert ben.server().get("ready")
    stack.docker("kill", stack.lab_container("ben"))
    wait_until(lambda: not ben.server(), timeout=45, interval=1,
               what="the hub to notice ben's lab died", state=ben.server, logs=stack.logs)
    assert "ben" not in sum(_holders(stack).values(), [])
    ben.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=stack.logs)


def _fails_cleanly(stack, user: HubUser, profile: str) -> str:
    started = time.monotonic()
    answer = user.start({"profile": profile})
    if answer.status_code in (201, 202):
        wait_until(lambda: not user.server(), timeout=SPAWN_TIMEOUT + 30, interval=1,
                   what=f"the {profile} spawn to fail", state=user.server, logs=stack.logs)
        message = "(reported on the progress page)"
    else:
        message = answer.json().get("message", "")
        assert answer.status_code >= 400 and message, answer.text
    assert time.monotonic() - started < SPAWN_TIMEOUT + 30
    assert stack.docker("ps", "-aq", "--filter", f"name={stack.lab_container(user.name)}").stdout == "", \
        "a failed spawn must leave no container"
    assert user.name not in sum(_holders(stack).values(), []), "a failed spawn must free its GPU"
    return message


@pytest.mark.parametrize("profile", ["exits", "gone", "oom"])
def test_failed_spawns_report_free_their_gpu_and_leave_nothing(fault_stack, fault_users, profile):
    stack = fault_stack
    if profile == "gone":
        # Present at `invoke up`, removed since: the spawn's pull fails (no registry).
        stack.docker("rmi", "-f", _image_of(stack, "gone"))
    _fails_cleanly(stack, fault_users["dan"], profile)
    # The user can still start a working lab right after.
    dan = fault_users["dan"]
    dan.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    dan.stop(logs=stack.logs)


def _image_of(stack, slug: str) -> str:
    from gpuhub.core.profiles import Profiles

    return Profiles.from_file(stack.settings["PROFILES_FILE"]).by_slug(slug).image
