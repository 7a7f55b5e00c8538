"""A user's lab in the browser: spawn with a GPU profile, run TensorFlow in a notebook,
stay private to its owner, and keep the work folder across stop and start.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import pytest
from selenium.webdriver.common.by import By

from gpuhub.core.profiles import Profiles
from harness.stack import ROOT
from support.browser import HubBrowser

pytestmark = pytest.mark.e2e

MARKER = "GPUHUB-E2E"
# Typed into the first cell, line by line (no indented blocks: the editor auto-indents).
NOTEBOOK_CELL = "\n".join([
    "import json, subprocess",
    "import tensorflow as tf",
    "gpus = tf.config.list_physical_devices('GPU')",
    "names = [tf.config.experimental.get_device_details(g).get('device_name', '') for g in gpus]",
    "check = json.loads(subprocess.run(['gpu-check', '--no-tensorflow'], capture_output=True, "
    "text=True, check=True).stdout)",
    f"print('{MARKER}', json.dumps(dict(tf_version=tf.__version__, tf_gpus=[g.name for g in gpus], "
    "tf_gpu_names=names, tf_sum=float(tf.reduce_sum(tf.ones([4, 4]))), gpu_check=check)))",
])
KEPT_FILE = "e2e-kept.txt"


@dataclass
class Lab:
    browser: HubBrowser
    profile: str
    expected_gpus: int  # what the profile allocates
    view: dict  # what the notebook printed


def profile_for(gpu_mode) -> str:
    """The GPU profile when the hub has GPUs (real or the test double), else CPU only."""
    return "gpu1" if gpu_mode.inventory else "cpu"


def _parse(output: str) -> dict:
    for line in output.splitlines():
        if line.startswith(MARKER + " "):
            return json.loads(line[len(MARKER) + 1:])
    raise AssertionError(f"the notebook cell printed no {MARKER} line; its output:\n{output}")


@pytest.fixture(scope="module")
def alice_lab(hub, users, gpu_mode, module_browser, measure) -> Lab:
    """alice logs in, picks the GPU profile, starts her lab and runs the TensorFlow cell."""
    profile = profile_for(gpu_mode)
    allocated = Profiles.from_file(ROOT / "jupyterhub" / "profiles.yaml").by_slug(profile).gpus
    alice = module_browser("alice")
    started = time.monotonic()
    alice.login("alice", users["alice"])
    alice.wait_at("/hub/spawn", "the spawn page right after login")
    alice.start_lab(profile)
    measure("e2e: login to JupyterLab loaded", time.monotonic() - started)
    started = time.monotonic()
    alice.new_notebook()
    output = alice.run_cell(NOTEBOOK_CELL)
    measure("e2e: new notebook + TensorFlow cell", time.monotonic() - started)
    return Lab(browser=alice, profile=profile, expected_gpus=allocated, view=_parse(output))


def test_tensorflow_imports_and_computes_in_the_notebook(alice_lab):
    view = alice_lab.view
    assert view["tf_version"], view
    assert view["tf_sum"] == 16.0, f"TensorFlow computed {view['tf_sum']} for sum(ones(4x4))"


def test_lab_received_exactly_the_allocated_gpus(hub, alice_lab, gpu_mode):
    if not gpu_mode.inventory:
        pytest.skip("the hub has no GPUs: --gpu=off, or no nvidia-smi lists any "
                    "(CI points NVIDIA_SMI at the test double's)")
    check = alice_lab.view["gpu_check"]
    # What the hub granted, and what the driver shows inside the lab; never the lab's
    # NVIDIA_VISIBLE_DEVICES, which the CDI path (Docker >= 29.2) sets to "void".
    granted = check["granted"]
    assert len(granted) == alice_lab.expected_gpus >= 1, \
        f"profile {alice_lab.profile} allocates {alice_lab.expected_gpus}, lab got {check}"
    assert set(granted) <= {g.device_id for g in gpu_mode.inventory}, check
    smi = check["nvidia_smi"]
    assert smi["available"] and len(smi["gpus"]) == len(granted), smi
    for device in granted:
        assert any(device in line for line in smi["gpus"]), f"{device} not in nvidia-smi -L: {smi}"

    labels = hub.inspect(hub.lab_container("alice"))["Config"]["Labels"]
    assert labels["gpuhub.gpus"].split(",") == granted, labels
    rows = json.loads(hub.invoke("gpus", "--json").stdout)
    held = sorted(r["uuid"] or r["gpu"] for r in rows if r["held_by"] == ["alice"])
    assert held == sorted(granted), f"`invoke gpus --json` holders: {rows}"


def test_tensorflow_uses_exactly_the_allocated_real_gpus(alice_lab, gpu_mode):
    if not gpu_mode.real:
        reason = ("no real NVIDIA GPU on this host (its own nvidia-smi is missing or fails)"
                  if gpu_mode.option != "off" else "--gpu=off")
        if gpu_mode.option == "required":
            pytest.fail(f"--gpu=required, but {reason}")
        pytest.skip(f"real-GPU check not run: {reason}; the lab's GPU wiring was checked "
                    "against the NVIDIA test double instead")
    view = alice_lab.view
    smi_lines = view["gpu_check"]["nvidia_smi"]["gpus"]
    assert len(view["tf_gpus"]) == alice_lab.expected_gpus >= 1, view
    # The container sees only its allocated devices, so equal counts and matching
    # models mean TensorFlow runs on exactly those.
    assert len(smi_lines) == len(view["tf_gpus"]), view
    for name in view["tf_gpu_names"]:
        assert any(name in line for line in smi_lines), f"TF device {name!r} vs {smi_lines}"


def test_the_lab_shows_its_own_gpus_in_nvidias_dashboards(alice_lab, gpu_mode):
    """jupyterlab-nvdashboard in the lab: on a real GPU it sees exactly the lab's GPUs; on
    the test double (no NVIDIA driver library) it shows none, and the lab is unharmed."""
    alice = alice_lab.browser
    alice.open("/user/alice/nvdashboard/accelerators/check")
    seen = json.loads(alice.wait_for("body", "the dashboards' GPU check").text)
    alice.open("/user/alice/lab")
    alice.wait_for(".jp-LabShell", "JupyterLab again")
    if gpu_mode.real:
        assert seen["has_gpu"] and seen["ngpus"] == alice_lab.expected_gpus, seen
    else:
        if gpu_mode.option == "required":
            pytest.fail("--gpu=required, but no real NVIDIA GPU on this host")
        assert seen["ngpus"] == 0 and seen["has_gpu"] is False, seen


def test_another_user_cannot_open_this_lab(hub, browser, users, alice_lab):
    bob = browser("bob")
    bob.login("bob", users["bob"])
    # The link alice would share: her lab, on her own origin.
    bob.driver.get(f"http://alice.localhost:{hub.settings['HUB_PORT']}/user/alice/lab")
    # alice's lab sends bob to the hub's OAuth page, which refuses him.
    refusal = bob.wait_for("div.error", "the hub to refuse bob alice's lab")
    assert "403" in refusal.text and "/user/alice/" in refusal.text, refusal.text
    assert not bob.driver.find_elements(By.CSS_SELECTOR, ".jp-LabShell"), bob.where()
    assert hub.inspect(hub.lab_container("alice"))["State"]["Running"], \
        "alice's lab must be untouched"


def test_work_folder_keeps_a_file_across_stop_and_start(hub, alice_lab):
    alice = alice_lab.browser
    content = "kept by the e2e test"
    written = alice.run_cell(f"open('work/{KEPT_FILE}', 'w').write({content!r})")
    assert written.strip() == str(len(content)), f"writing work/{KEPT_FILE}: {written}"
    alice.stop_lab()
    # Start again at once: the spawner waits for Docker to remove the old container
    # before the hub reports "stopped", so this must not hit a name conflict.
    alice.driver.find_element(By.ID, "start").click()
    alice.start_lab(alice_lab.profile)
    assert KEPT_FILE in alice.listed_files("alice", "work")


def test_the_lab_ran_on_the_nvidia_path_this_engine_takes(hub, alice_lab, gpu_mode):
    """Docker 20.10's hook path leaves the grant in the lab's NVIDIA_VISIBLE_DEVICES; Docker
    >= 29.2's CDI path leaves "void" there (the generated CDI spec sets it). The tests above
    pass on both; this one says which ran, and fails if it is not the one
    GPUHUB_E2E_GPU_PATH (legacy or cdi; CI runs the e2e suite on each) names."""
    if not gpu_mode.inventory:
        pytest.skip("the hub has no GPUs: no NVIDIA path to check")
    lab = hub.lab_container("alice")
    environ = hub.docker("exec", lab, "cat", "/proc/1/environ").stdout.split("\0")
    visible = [kv.split("=", 1)[1] for kv in environ if kv.startswith("NVIDIA_VISIBLE_DEVICES=")]
    granted = alice_lab.view["gpu_check"]["granted"]
    path = {",".join(granted): "legacy", "void": "cdi"}.get(visible[-1] if visible else "")
    assert path is not None, f"the lab's NVIDIA_VISIBLE_DEVICES is {visible}, grant {granted}"
    expected = os.environ.get("GPUHUB_E2E_GPU_PATH", path)
    assert path == expected, f"the lab ran on the {path} path, GPUHUB_E2E_GPU_PATH={expected}"
