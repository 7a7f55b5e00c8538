"""MIG instances on a real stack: the NVIDIA double with a GPU in MIG mode.

The double is reinstalled with ``tests/gpu_double/inventory-mig.json`` for this module (GPU 0,
an A100-SXM4-40GB in MIG mode with 3g.20gb, 2g.10gb and two 1g.5gb instances; GPU 1 whole)
and put back to ``inventory-4.json`` afterwards, so that the other modules find their 4 T4s.
That needs root (install.sh writes /etc and /usr/local/lib), as CI runs it. `invoke up` then
lists the instances from the host's `nvidia-smi -L`; a profile with ``gpu_slice: 1g.5gb`` is
given one instance by UUID, under the exclusive policy and the line like a GPU.

Before MIG was a unit, each test here failed: the inventory had GPU 0 itself (its instances
were not listed), the hook knew no MIG instance, gpu-check counted the lab's one MIG device as
"1 GPU" with no MIG UUID, and `invoke gpus` had no instance rows.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests

from harness import ROOT
from harness.hub import HubUser
from harness.wait import wait_until
from support import gpu_state

SPAWN_TIMEOUT = 180
LINE_TIMEOUT = 120
# Short enough that the instance labs below outlive it: idle reclaim must leave them alone.
IDLE_TIMEOUT = 15
MAX_AGE = 25
DOUBLE = ROOT / "tests" / "gpu_double"
INVENTORY = json.loads((DOUBLE / "inventory-mig.json").read_text())
PARENT = INVENTORY["gpus"][0]["uuid"]
WHOLE = INVENTORY["gpus"][1]["uuid"]
INSTANCES = {m["uuid"]: m["profile"] for m in INVENTORY["gpus"][0]["mig"]}
SMALL = [uuid for uuid, profile in INSTANCES.items() if profile == "1g.5gb"]  # two of them
USERS = ["migone", "migtwo", "migthree"]
PROFILES = f"""
- display_name: CPU only
  slug: cpu
- display_name: Whole GPU
  slug: gpu1
  gpus: 1
- display_name: Small MIG slice
  slug: small
  gpus: 1
  gpu_slice: 1g.5gb
  default: true
- display_name: Small MIG slice, brief
  slug: brief
  gpus: 1
  gpu_slice: 1g.5gb
  max_age: {MAX_AGE}s
"""


def install_double(inventory: str) -> None:
    done = subprocess.run(["bash", str(DOUBLE / "install.sh"), str(DOUBLE / inventory)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"install.sh {inventory}: {done.stdout}{done.stderr}"


@pytest.fixture(scope="module")
def mig_double():
    """The double with a GPU in MIG mode, for this module only (the 4 T4s come back after)."""
    if os.geteuid() != 0:
        pytest.fail("the MIG tests reinstall the NVIDIA double (tests/gpu_double/install.sh): "
                    "run them as root, as CI does")
    gpu_state.clear()
    install_double("inventory-mig.json")
    try:
        yield INVENTORY
    finally:
        gpu_state.clear()
        install_double("inventory-4.json")


@pytest.fixture(scope="module")
def mstack(mig_double, stack_factory, tmp_path_factory):
    profiles = Path(tmp_path_factory.mktemp("mig-profiles")) / "profiles.yaml"
    profiles.write_text(PROFILES)
    s = stack_factory(PROFILES_FILE=str(profiles), GPU_LINE_TIMEOUT=str(LINE_TIMEOUT),
                      GPU_IDLE_TIMEOUT=str(IDLE_TIMEOUT))
    s.up("--no-build")
    return s


@pytest.fixture(scope="module")
def musers(mstack):
    mstack.add_users({name: f"{name}-pw-12345" for name in USERS})
    made = {name: HubUser.signed_in(mstack.url, name, f"{name}-pw-12345") for name in USERS}
    yield made
    for user in made.values():
        if user.server():
            user.stop(logs=mstack.logs)


def board(stack) -> list[dict]:
    return json.loads(stack.invoke("gpus", "--json").stdout)


def granted(stack, name: str) -> str:
    return stack.inspect(stack.lab_container(name))["Config"]["Labels"]["gpuhub.gpus"]


def lab_view(user: HubUser) -> dict:
    return json.loads(user.run_code(
        "import subprocess; print(subprocess.run(['gpu-check', '--no-tensorflow'], "
        "capture_output=True, text=True).stdout)"))


def test_the_inventory_has_the_instances_and_the_whole_gpu_never_the_partitioned_one(mstack):
    rows = board(mstack)
    assert [r["uuid"] for r in rows] == [*INSTANCES, WHOLE], rows
    assert [r["gpu"] for r in rows] == ["0:0", "0:1", "0:2", "0:3", "1"]
    assert all(r["parent"] == PARENT and r["mig_profile"] == INSTANCES[r["uuid"]]
               for r in rows[:4]), rows
    table = mstack.invoke("gpus").stdout
    assert "(MIG mode)" in table and "MIG 1g.5gb" in table, table


def test_a_slice_profile_gets_one_instance_that_the_lab_sees_alone(mstack, musers):
    one = musers["migone"]
    one.start_ready({"profile": "small"}, SPAWN_TIMEOUT, logs=mstack.logs)
    uuid = granted(mstack, "migone")
    assert uuid in SMALL, uuid
    lab = mstack.inspect(mstack.lab_container("migone"))
    listed = mstack.docker("exec", lab["Id"], "nvidia-smi", "-L").stdout.splitlines()
    assert listed[0].startswith("GPU 0: NVIDIA A100-SXM4-40GB") and PARENT in listed[0], listed
    assert listed[1:] == [f"  MIG 1g.5gb      Device  0: (UUID: {uuid})"], listed
    view = lab_view(one)
    assert view["granted"] == [uuid], view
    assert [line.rsplit("(UUID: ", 1)[1].rstrip(")")
            for line in view["nvidia_smi"]["gpus"]] == [uuid], view


def test_the_second_small_slice_goes_to_the_next_user_and_the_third_waits_in_line(
        mstack, musers):
    one, two, three = (musers[n] for n in USERS)
    if not one.server():
        one.start_ready({"profile": "small"}, SPAWN_TIMEOUT, logs=mstack.logs)
    two.start_ready({"profile": "small"}, SPAWN_TIMEOUT, logs=mstack.logs)
    assert {granted(mstack, "migone"), granted(mstack, "migtwo")} == set(SMALL)
    assert three.start({"profile": "small"}).status_code == 202
    assert "1st in line" in three.progress_messages("in line")[-1]
    freed = granted(mstack, "migone")
    one.stop(logs=mstack.logs)
    three.wait_ready(SPAWN_TIMEOUT + LINE_TIMEOUT, logs=mstack.logs)
    assert granted(mstack, "migthree") == freed
    # A whole-GPU profile is never given an instance, and the instances stay for slices.
    one.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=mstack.logs)
    assert granted(mstack, "migone") == WHOLE


def test_the_admin_sees_instances_under_their_gpu_with_unknown_utilisation(mstack, musers):
    rows = {r["uuid"]: r for r in board(mstack)}
    held = [u for u in SMALL if rows[u]["holders"]]
    assert held, rows
    assert all(rows[u]["utilisation"] is None for u in INSTANCES), rows  # NVML has none
    holder = rows[held[0]]["holders"][0]["user"]
    table = mstack.invoke("gpus").stdout
    line = next(row for row in table.splitlines() if "MIG 1g.5gb" in row and holder in row)
    assert "unknown" in line, table
    admin = HubUser(mstack.url, "admin")
    admin.login(mstack.admin_passwords["admin"])
    page = admin.http.get(f"{mstack.url}/hub/gpus?format=json", timeout=30).json()
    assert {r["uuid"]: r.get("parent") for r in page["rows"]} == {
        **{u: PARENT for u in INSTANCES}, WHOLE: None}
    token = (mstack.workdir / "secrets" / f"{mstack.project}-metrics-token").read_text().strip()

    def metric_lines() -> list[str]:
        text = requests.get(f"{mstack.url}/hub/metrics", timeout=30,
                            headers={"Authorization": f"Bearer {token}"}).text
        return [m for m in text.splitlines() if m.startswith("gpuhub_gpu_mig_instance{")]

    found = wait_until(lambda: len(metric_lines()) == 4 and metric_lines(), timeout=30,
                       interval=1, what="a MIG metric per instance", state=metric_lines,
                       logs=mstack.logs)
    assert all(f'parent="{PARENT}"' in m for m in found), found


def test_an_instance_reclaimed_at_its_profiles_max_age_goes_to_the_next_in_line(mstack, musers):
    """The reclaimer stops a lab on an instance at its profile's max_age and the instance goes
    to the one in line; idle reclaim leaves instance labs alone (NVML reads no utilisation
    for them: never stopped on missing data)."""
    one, two, three = (musers[n] for n in USERS)
    if not three.server():
        three.start_ready({"profile": "small"}, SPAWN_TIMEOUT, logs=mstack.logs)
    for user in (one, two):
        if user.server():
            user.stop(logs=mstack.logs)
    two.start_ready({"profile": "brief"}, SPAWN_TIMEOUT, logs=mstack.logs)
    brief = granted(mstack, "migtwo")
    assert brief in SMALL and brief != granted(mstack, "migthree")
    assert one.start({"profile": "small"}).status_code == 202
    assert "1st in line" in one.progress_messages("in line")[-1]

    wait_until(lambda: not two.server(), timeout=MAX_AGE + 60, interval=1,
               what="the brief lab to reach its max_age", state=two.server, logs=mstack.logs)
    home = two.http.get(f"{two.base}/hub/home", timeout=30).text
    assert (f"Your last lab was stopped: it reached the {MAX_AGE} s time limit of its "
            "profile (brief)") in home
    one.wait_ready(SPAWN_TIMEOUT + LINE_TIMEOUT, logs=mstack.logs)
    assert granted(mstack, "migone") == brief
    since = mstack.inspect(mstack.lab_container("migthree"))["State"]["StartedAt"]
    age = time.time() - datetime.datetime.fromisoformat(since.split(".")[0] + "+00:00").timestamp()
    assert age > IDLE_TIMEOUT + 10, f"migthree's lab is {age:.0f} s old: too young to tell"
    assert three.server().get("ready"), f"migthree's instance lab (since {since}) was stopped"
    assert "Stopping the lab of migthree" not in mstack.logs(tail=3000, service="hub")
