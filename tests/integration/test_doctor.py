"""`invoke doctor` on a real engine, against the NVIDIA double in each modelled state: the
verdict (one line per check, a fix for each failure) and the exit code.

TensorFlow cannot see the double's GPUs (no CUDA here), so these runs use --no-tensorflow;
the GPU runner runs the full check before the e2e suite (docs/gpu-runner.md)."""

from __future__ import annotations

import json

import pytest

from support import gpu_state


def doctor(stack, *args: str):
    return stack.invoke("doctor", "--no-tensorflow", *args, check=False)


def lines(done) -> list[str]:
    return done.stdout.splitlines()


def line_of(done, status: str, name: str) -> str:
    found = [ln for ln in lines(done) if ln.startswith(f"{status:<4}  {name} ")]
    assert found, f"no {status} {name} line in:\n{done.stdout}\n{done.stderr}"
    return found[0]


@pytest.fixture(autouse=True)
def healthy_afterwards():
    yield
    gpu_state.clear()


def test_a_healthy_server_is_ready(stack):
    done = doctor(stack)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "driver 535.183.01, 4 GPU(s) read" in line_of(done, "ok", "driver")
    assert "nvidia-container-toolkit 1.19.0" in line_of(done, "ok", "toolkit")
    assert "Docker 20.10" in line_of(done, "ok", "docker")
    assert line_of(done, "ok", "MIG").endswith("off")
    lab = line_of(done, "ok", "lab container")
    assert "sees exactly GPU GPU-" in lab and "(legacy path)" in lab
    assert "not run (--no-tensorflow)" in line_of(done, "warn", "tensorflow")
    assert lines(done)[-1] == "ready for labs"
    report = json.loads(doctor(stack, "--json").stdout)
    assert report["ready"] is True
    assert sum(c["name"].startswith("GPU ") for c in report["checks"]) == 4


def test_a_lost_gpu_fails_its_line_and_the_lab(stack):
    lost = "GPU-e7f0a853-9b2c-4d6e-a4f5-3d4e5f6a7b83"
    gpu_state.write({}, lost=[lost])
    done = doctor(stack)
    assert done.returncode == 1 and "check(s) failed" in done.stderr
    assert "Unable to determine the device handle" in line_of(done, "FAIL", "GPU ?")
    assert "nvml error: unknown error" in line_of(done, "FAIL", "lab container")
    assert "nvidia-smi -r" in done.stdout  # the fix is named
    assert json.loads(doctor(stack, "--json").stdout)["ready"] is False


def test_a_driver_library_mismatch_fails_with_the_reboot_fix(stack):
    gpu_state.write({}, driver="mismatch")
    done = doctor(stack)
    assert done.returncode == 1
    assert "Driver/library version mismatch; NVML library version: 570.124" in line_of(
        done, "FAIL", "driver")
    assert "fix: reboot after a driver upgrade" in done.stdout


def test_a_toolkit_with_the_container_escape_fails(stack):
    gpu_state.write({}, toolkit="1.17.4")
    done = doctor(stack)
    assert done.returncode == 1
    assert "1.17.4 has a container escape (CVE-2025-23266)" in line_of(done, "FAIL", "toolkit")
    assert "fix: upgrade nvidia-container-toolkit to >= 1.17.8" in done.stdout


def test_a_gpu_in_error_after_an_xid_fails_its_line_with_the_reset_fix(stack):
    gpu_state.write({}, reset=["GPU-4f6f9d2a-1c3e-4b7a-9e21-0a1b2c3d4e50"])
    done = doctor(stack)
    assert done.returncode == 1, done.stdout
    assert "needs a reset (nvidia-smi reads [GPU requires reset]" in line_of(done, "FAIL", "GPU 0")
    assert "nvidia-smi -r -i 0" in done.stdout


def test_a_corrupted_inforom_only_warns(stack):
    gpu_state.write({}, inforom=["GPU-4f6f9d2a-1c3e-4b7a-9e21-0a1b2c3d4e50"])
    done = doctor(stack)
    assert done.returncode == 0, done.stdout
    assert "exited 14" in line_of(done, "warn", "GPU infoROM")
