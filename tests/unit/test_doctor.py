"""`invoke doctor`'s verdicts from what the driver, the toolkit, Docker and a throw-away lab
said: the real tools' outputs (tests/gpu_double/README.md has their sources). The checks on
a real engine and the double's states: tests/integration/test_doctor.py."""

from __future__ import annotations

import json

import pytest

from gpuhub.tasks import doctor
from gpuhub.tasks.doctor import FAIL, OK, WARN

UUID = "GPU-8a2b7c41-5d9e-4f03-b6a7-1b2c3d4e5f61"
ROWS = f"0, {UUID}, 0 %, 535.183.01, Tesla T4\n1, GPU-c3d9, 35 %, 535.183.01, Tesla T4\n"


def test_a_healthy_driver_lists_each_gpu():
    check, gpus = doctor.driver_check(0, ROWS, "", missing=False)
    assert (check.status, check.detail) == (OK, "driver 535.183.01, 2 GPU(s) read")
    assert [c.status for c in doctor.gpu_checks(0, ROWS, gpus)] == [OK, OK]


def test_a_mismatch_fails_with_both_lines_and_the_reboot_fix():
    out = ("Failed to initialize NVML: Driver/library version mismatch\n"
           "NVML library version: 570.124\n")
    check, gpus = doctor.driver_check(18, out, "", missing=False)
    assert check.status == FAIL and gpus == []
    assert check.detail == ("nvidia-smi failed: Failed to initialize NVML: Driver/library "
                            "version mismatch; NVML library version: 570.124")
    assert "reboot" in check.fix


def test_a_lost_gpu_fails_its_own_line_and_infoROM_only_warns():
    lost = "Unable to determine the device handle for GPU0000:04:00.0: Unknown Error"
    check, gpus = doctor.driver_check(15, ROWS + lost + "\n", "", missing=False)
    assert check.status == OK and "1 line(s) not read" in check.detail
    checks = doctor.gpu_checks(15, ROWS + lost, gpus)
    assert [c.status for c in checks] == [OK, OK, FAIL] and checks[-1].detail == lost
    assert [c.status for c in doctor.gpu_checks(14, ROWS, gpus)][-1] == WARN


def test_a_gpu_that_needs_a_reset_fails_its_line_with_the_reset_fix():
    rows = ROWS.replace("35 %", "[GPU requires reset]")
    check, gpus = doctor.driver_check(0, rows, "", missing=False)
    assert check.status == OK
    checks = doctor.gpu_checks(0, rows, gpus)
    assert [c.status for c in checks] == [OK, FAIL]
    assert checks[1].detail == ("Tesla T4 GPU-c3d9 needs a reset (nvidia-smi reads [GPU requires "
                                "reset]: an Xid left it in error)")
    assert "nvidia-smi -r -i 1" in checks[1].fix


def test_a_gpu_name_with_a_comma_is_read_whole():
    check, gpus = doctor.driver_check(0, f"0, {UUID}, 0 %, 570.1, NVIDIA A100, PCIe\n", "",
                                      missing=False)
    assert gpus[0]["name"] == "NVIDIA A100, PCIe" and gpus[0]["driver"] == "570.1"


@pytest.mark.parametrize("text, swarm, status, words", [
    ("NVIDIA Container Toolkit CLI version 1.17.8\ncommit: f202b80", False, OK, "1.17.8"),
    ("NVIDIA Container Toolkit CLI version 1.17.4\ncommit: x", False, FAIL, "CVE-2025-23266"),
    ("NVIDIA Container Toolkit CLI version 1.18.2", True, FAIL, "ignores Swarm's grant"),
    ("NVIDIA Container Toolkit CLI version 1.18.2", False, OK, "1.18.2"),
    ("NVIDIA Container Toolkit CLI version 1.19.0", True, OK, "1.19.0"),
    ("garbage", False, FAIL, "no version"),
])
def test_the_toolkit_version(text, swarm, status, words):
    check = doctor.toolkit_check(text, missing=False, swarm=swarm)
    assert check.status == status and words in check.detail


def test_docker_and_its_nvidia_path():
    assert "legacy hook path" in doctor.docker_check("20.10.24", "v1 cgroupfs").detail
    assert "CDI path likely" in doctor.docker_check("29.2.0", "v2 systemd").detail
    assert doctor.docker_check("", "?").status == FAIL


def report(granted, smi, visible=None, tf=None) -> str:
    return json.dumps({"NVIDIA_VISIBLE_DEVICES": visible if visible is not None else granted,
                       "granted": [granted], "nvidia_smi": {"gpus": smi}, "tensorflow": tf})


def test_the_lab_must_see_exactly_its_gpu_and_tensorflow_compute_on_it():
    line = f"GPU 0: Tesla T4 (UUID: {UUID})"
    good = doctor.lab_check(UUID, 0, report(UUID, [line], "void", {
        "imported": True, "version": "2.18.0", "gpus": ["/physical_device:GPU:0"],
        "computation_ok": True}), "", tensorflow=True)
    assert [(c.status, c.detail) for c in good] == [
        (OK, f"sees exactly GPU {UUID} (CDI path)"),
        (OK, "TensorFlow 2.18.0 computes on /physical_device:GPU:0")]
    two = doctor.lab_check(UUID, 0, report(UUID, [line, "GPU 1: x"]), "", tensorflow=False)
    assert [c.status for c in two] == [FAIL, WARN]
    cpu = doctor.lab_check(UUID, 0, report(UUID, [line], tf={
        "imported": True, "version": "2.18.0", "gpus": [], "computation_ok": True}), "", True)
    assert cpu[1].status == FAIL and "sees 0 GPU(s)" in cpu[1].detail
    refused = doctor.lab_check(UUID, 125, "", "docker: Error response from daemon: ... "
                               "nvidia-container-cli: detection error: nvml error: unknown "
                               "error: unknown.", True)
    assert refused[0].detail.endswith("the NVIDIA toolkit refused it: nvml error: unknown error")


def test_the_report_says_each_fix_and_the_verdict():
    checks = [doctor.Check("driver", OK, "fine"), doctor.Check("toolkit", FAIL, "old", "upgrade")]
    text = doctor.report_text(checks)
    assert text.splitlines() == ["ok    driver   fine", "FAIL  toolkit  old",
                                 "               fix: upgrade"]
    assert json.loads(doctor.report_json(checks))["ready"] is False
    assert doctor.report_text(checks[:1]).endswith("ready for labs")


# --- MIG --------------------------------------------------------------------------------------

A100 = "GPU-5b0c7a1e-3f2d-4c8b-9a61-7e2f4d3c1b90"
LISTED = (f"GPU 0: NVIDIA A100-SXM4-40GB (UUID: {A100})\n"
          "  MIG 3g.20gb     Device  0: (UUID: MIG-1d4e8f20-6a3b-5c7d-8e9f-0a1b2c3d4e51)\n"
          "  MIG 1g.5gb      Device  1: (UUID: MIG-3f60a142-8c5d-5e9f-a0b1-2c3d4e5f6a73)\n"
          f"GPU 1: NVIDIA A100-SXM4-40GB (UUID: {UUID})\n")


def test_mig_with_instances_is_fine_and_says_what_labs_get():
    check = doctor.mig_check(0, f"0, {A100}, Enabled\n1, {UUID}, Disabled\n", LISTED)
    assert (check.status, check.detail) == (OK, "on (GPU 0: 3g.20gb, 1g.5gb); labs are given "
                                                "these instances, profiles ask for one with "
                                                "gpu_slice")


def test_a_gpu_in_mig_mode_without_instances_is_a_warning_with_the_fix():
    check = doctor.mig_check(0, f"0, {A100}, Disabled\n1, {UUID}, Enabled\n", LISTED)
    assert check.status == WARN
    assert check.detail == "GPU 1 is in MIG mode with no MIG instance: no lab can use it"
    assert "nvidia-smi mig -cgi 1g.5gb -C -i 1" in check.fix


@pytest.mark.parametrize("modes, detail", [(f"0, {UUID}, [N/A]\n", "off"),
                                           ("", "not reported (exit 2)")])
def test_mig_off_or_not_reported(modes, detail):
    assert doctor.mig_check(2 if not modes else 0, modes, "") == doctor.Check("MIG", OK, detail)
