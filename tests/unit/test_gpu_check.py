"""The lab's gpu-check counts the devices `nvidia-smi -L` shows: whole GPUs and MIG instances.

No Docker: gpu-check runs here against the NVIDIA test double's own nvidia-smi, given what a
lab would be given (the hook's inventory file with the grant), as inside a lab.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOUBLE = ROOT / "tests" / "gpu_double"
MIG_INVENTORY = json.loads((DOUBLE / "inventory-mig.json").read_text())
MIG = [m["uuid"] for m in MIG_INVENTORY["gpus"][0]["mig"]]
WHOLE = MIG_INVENTORY["gpus"][1]["uuid"]


def load_script(path: Path, name: str):
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    loader.exec_module(module)
    return module


def gpu_check(tmp_path: Path, visible: str, inventory: dict = MIG_INVENTORY) -> dict:
    """gpu-check's report in a lab granted ``visible``, with the double's nvidia-smi on PATH."""
    hook = load_script(DOUBLE / "nvidia-container-runtime-hook", "gpu_double_hook_for_check")
    tsv = tmp_path / "inventory.tsv"
    tsv.write_bytes(hook.to_tsv(inventory, visible))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nexec sh {DOUBLE / 'nvidia-smi'} \"$@\"\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "GPUHUB_FAKE_GPUS_FILE": str(tsv),
           "GPUHUB_FAKE_GPU_STATE": str(tmp_path / "none.tsv"), "GPUHUB_GPUS": visible,
           "NVIDIA_VISIBLE_DEVICES": "void"}
    done = subprocess.run([sys.executable, str(ROOT / "jupyterlab" / "gpu-check"),
                           "--no-tensorflow"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def uuids(report: dict) -> list[str]:
    return [line.rsplit("(UUID: ", 1)[1].rstrip(")") for line in report["nvidia_smi"]["gpus"]]


@pytest.mark.parametrize("visible, seen", [
    (MIG[2], [MIG[2]]),                       # one 1g.5gb instance: one device, not its GPU
    (f"0:0,{MIG[3]}", [MIG[0], MIG[3]]),      # two instances of one GPU
    (f"{MIG[1]},{WHOLE}", [MIG[1], WHOLE]),   # an instance and a whole GPU
])
def test_a_lab_given_mig_instances_counts_each_instance_as_a_device(tmp_path, visible, seen):
    assert uuids(gpu_check(tmp_path, visible)) == seen


def test_a_host_view_counts_every_instance_and_the_whole_gpu(tmp_path):
    assert uuids(gpu_check(tmp_path, "all")) == [*MIG, WHOLE]


def test_whole_gpus_are_counted_as_before(tmp_path):
    four = json.loads((DOUBLE / "inventory-4.json").read_text())
    assert len(gpu_check(tmp_path, "1,3", four)["nvidia_smi"]["gpus"]) == 2


def test_gpu_lines_without_instances_under_them_are_devices():
    check = load_script(ROOT / "jupyterlab" / "gpu-check", "gpu_check_script")
    listing = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-1)\nGPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-2)\n"
    assert check.devices(listing) == listing.strip().splitlines()
