"""Reclaiming idle GPUs and profiles' time limits on a real stack (the NVIDIA test double
reports the utilisation the test scripts): the idle lab is stopped and its files kept, a
busy GPU's lab is not touched, max_age stops a lab, and each user reads why.
"""

from __future__ import annotations

import json

import pytest

from harness.hub import HubUser
from harness.wait import wait_until
from support import gpu_state

SPAWN_TIMEOUT = 180
IDLE_TIMEOUT = 15
MAX_AGE = 25
PROFILES = f"""
- display_name: CPU only
  slug: cpu
- display_name: 1 GPU
  slug: gpu1
  gpus: 1
  default: true
- display_name: 1 GPU, short
  slug: short
  gpus: 1
  max_age: {MAX_AGE}s
"""


@pytest.fixture(scope="module")
def rstack(stack_factory, tmp_path_factory):
    profiles = tmp_path_factory.mktemp("reclaim") / "profiles.yaml"
    profiles.write_text(PROFILES)
    s = stack_factory(GPU_IDLE_TIMEOUT=str(IDLE_TIMEOUT), PROFILES_FILE=str(profiles))
    s.up("--no-build")
    yield s
    gpu_state.clear()


def started(stack, name: str, profile: str) -> HubUser:
    user = stack.signed_up(name)
    user.start_ready({"profile": profile}, SPAWN_TIMEOUT, logs=stack.logs)
    return user


def gpu_of(stack, name: str) -> str:
    return stack.inspect(stack.lab_container(name))["Config"]["Labels"]["gpuhub.gpus"]


def home_says(user: HubUser) -> str:
    page = user.http.get(f"{user.base}/hub/home", timeout=30)
    assert page.status_code == 200
    return page.text


def test_an_idle_gpus_lab_is_stopped_a_busy_ones_is_not_and_max_age_holds(rstack):
    busy = started(rstack, "busy", "gpu1")
    # busy's GPU computes from its start (the next start may take longer than the idle
    # timeout on a slow machine), then aged's too; every other GPU reads 0 %.
    computing = {gpu_of(rstack, "busy"): (90, 8000)}
    gpu_state.write(computing)
    aged = started(rstack, "aged", "short")
    gpu_state.write(computing | {gpu_of(rstack, "aged"): (70, 4000)})
    idler = started(rstack, "idler", "gpu1")
    assert idler.run_code("print(open('work/kept.txt', 'w').write('kept'))").strip() == "4"

    wait_until(lambda: not idler.server(), timeout=IDLE_TIMEOUT + 60, interval=1,
               what="the idle GPU's lab to be stopped", state=idler.server, logs=rstack.logs)
    assert busy.server().get("ready"), "a busy GPU's lab is not touched"
    assert "Your last lab was stopped: its GPUs were idle (under 5 % busy) for" in home_says(idler)
    assert "Stopping the lab of idler: its GPUs were idle" in rstack.logs(tail=2000, service="hub")

    wait_until(lambda: not aged.server(), timeout=MAX_AGE + 60, interval=1,
               what="the short profile's lab to reach max_age", state=aged.server,
               logs=rstack.logs)
    assert (f"Your last lab was stopped: it reached the {MAX_AGE} s time limit of its "
            "profile (short)") in home_says(aged)
    assert busy.server().get("ready"), "still not touched"

    journal = rstack.compose("exec", "-T", "hub", "cat",
                             "/srv/jupyterhub/data/usage.jsonl").stdout
    reasons = {e.get("reason", "") for e in map(json.loads, journal.splitlines()) if e["event"] == "stop"}
    assert any(r.startswith("its GPUs were idle") for r in reasons), reasons
    assert any(r.startswith(f"it reached the {MAX_AGE} s time limit") for r in reasons), reasons

    # The idle lab's files are kept: a new lab has them.
    idler.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=rstack.logs)
    assert idler.run_code("print(open('work/kept.txt').read())").strip() == "kept"
    for user in (idler, busy):
        user.stop(logs=rstack.logs)
