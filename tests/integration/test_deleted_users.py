"""No lab outlives its user: `invoke deluser` while the user's start waits in line for a
GPU, and while their lab boots, leaves no container, now or later (4 fake GPUs: one user
holds them all, so the next GPU start waits in line). What Docker has is read on the host.
"""

from __future__ import annotations

import time

import pytest

from gpuhub.services import reclaim
from harness.wait import wait_until

PROFILES = ("- {display_name: CPU only, slug: cpu, gpus: 0}\n"
            "- {display_name: 1 GPU, slug: gpu1, gpus: 1}\n"
            "- {display_name: 4 GPUs, slug: gpu4, gpus: 4}\n")
WAIT_FOR_READY = 180


@pytest.fixture(scope="module")
def dstack(stack_factory, tmp_path_factory):
    profiles = tmp_path_factory.mktemp("deleted") / "profiles.yaml"
    profiles.write_text(PROFILES)
    stack = stack_factory(PROFILES_FILE=str(profiles), GPU_LINE_TIMEOUT="300")
    stack.up("--no-build")
    return stack


def containers_of(stack, name: str) -> str:
    """The IDs of every container (any state) named as ``name``'s lab, from the host."""
    return stack.docker("ps", "-aq", "--filter", f"name=^/{stack.lab_container(name)}$").stdout


def test_a_user_deleted_while_waiting_in_line_gets_no_lab_when_a_gpu_frees(dstack):
    holder = dstack.signed_up("holder")
    holder.start_ready({"profile": "gpu4"}, WAIT_FOR_READY, logs=dstack.logs)
    waiter = dstack.signed_up("waiter")
    assert waiter.start({"profile": "gpu1"}).status_code == 202
    assert "in line" in waiter.progress_messages("in line")[-1]

    dstack.invoke("deluser", "waiter")

    assert "waiter" not in dstack.invoke("users").stdout
    holder.stop(logs=dstack.logs)  # four GPUs free: the line must not serve a deleted user
    time.sleep(10)  # more than three rounds of the line's offers
    assert containers_of(dstack, "waiter") == "", dstack.docker("ps", "-a").stdout
    dstack.invoke("deluser", "holder")


def test_a_user_deleted_while_their_lab_boots_leaves_no_container(dstack):
    booter = dstack.signed_up("booter")
    assert booter.start({"profile": "cpu"}).status_code in (201, 202)
    wait_until(lambda: containers_of(dstack, "booter") != "" or booter.server().get("ready"),
               timeout=60, interval=0.1, what="booter's lab container to exist",
               logs=dstack.logs)

    dstack.invoke("deluser", "booter")

    for _ in range(20):  # and none appears later, from a start that was still under way
        assert containers_of(dstack, "booter") == "", dstack.docker("ps", "-a").stdout
        time.sleep(0.5)
    assert "booter" not in dstack.invoke("users").stdout


def test_a_lab_container_of_a_user_the_hub_does_not_have_is_removed(dstack):
    """What a crash between a user's deletion and their lab's removal would leave: a lab
    container (gpuhub's labels, a lab's name) of a user the hub does not have."""
    name = dstack.lab_container("ghost")
    dstack.docker("run", "-d", "--name", name, "--network", "none",
                  "--label", f"gpuhub.project={dstack.project}", "--label", "gpuhub.user=ghost",
                  "--entrypoint", "sleep", dstack.settings["LAB_IMAGE"], "600")
    patience = reclaim.ORPHAN_AFTER + 2 * reclaim.SWEEP_ROUNDS * int(
        dstack.settings["GPU_SAMPLE_INTERVAL"]) + 30
    wait_until(lambda: containers_of(dstack, "ghost") == "", timeout=patience, interval=1,
               what="the gpu-reclaimer to remove ghost's lab", logs=dstack.logs)
    logged = dstack.compose("logs", "hub").stdout
    assert "removed the lab container" in logged and "of ghost, whom the hub no longer has" in logged
