"""The NVIDIA test double reports the GPU state the tests script, and shares it with containers.

No Docker: the fake ``nvidia-smi`` (sh + awk) runs here exactly as inside a container, on
the inventory TSV the fake hook writes; the hook's bind mount is checked as a command.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import gpu_state

DOUBLE = Path(__file__).resolve().parents[1] / "gpu_double"
INVENTORY = json.loads((DOUBLE / "inventory-4.json").read_text())
UUID = [g["uuid"] for g in INVENTORY["gpus"]]  # host order
MIG_INVENTORY = json.loads((DOUBLE / "inventory-mig.json").read_text())
MIG_GPU = [g["uuid"] for g in MIG_INVENTORY["gpus"]]
MIG = [m["uuid"] for m in MIG_INVENTORY["gpus"][0]["mig"]]  # 3g.20gb, 2g.10gb, 1g.5gb, 1g.5gb
TOTAL = 15360
SAMPLER_GPUS = ("--query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total",
                "--format=csv,noheader,nounits")
SAMPLER_APPS = ("--query-compute-apps=gpu_uuid,pid,used_memory", "--format=csv,noheader,nounits")


def load_script(name: str):
    """One of the double's Python scripts (no .py name) as a module."""
    loader = importlib.machinery.SourceFileLoader(
        "gpu_double_" + name.replace("-", "_"), str(DOUBLE / name))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def load_hook():
    return load_script("nvidia-container-runtime-hook")


@pytest.fixture
def hook(tmp_path, monkeypatch):
    for name in ("LOG", "INVENTORY", "STATE", "SMI", "SWARM_RESOURCE"):
        monkeypatch.delenv(f"GPUHUB_GPU_DOUBLE_{name}", raising=False)
    module = load_hook()
    monkeypatch.setattr(module, "LOG", str(tmp_path / "hook.log"))
    return module


@pytest.fixture
def state(tmp_path) -> Path:
    """The state file the fake nvidia-smi reads (absent until a test writes it)."""
    return tmp_path / "state" / "gpus.tsv"


@pytest.fixture
def smi(tmp_path, hook, state):
    """Run the fake nvidia-smi as in a container granted ``visible`` (the hook's TSV)."""

    def run(*args: str, visible: str = "all", check: bool = True,
            inventory_json: dict = INVENTORY) -> subprocess.CompletedProcess:
        inventory = tmp_path / "gpus.tsv"
        inventory.write_bytes(hook.to_tsv(inventory_json, visible))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
               "GPUHUB_FAKE_GPUS_FILE": str(inventory), "GPUHUB_FAKE_GPU_STATE": str(state)}
        done = subprocess.run(["sh", str(DOUBLE / "nvidia-smi"), *args], env=env,
                              capture_output=True, text=True)
        if check:
            assert done.returncode == 0, f"nvidia-smi {args} failed: {done.stderr}"
        return done

    return run


def write_state(state: Path, *lines: str) -> None:
    state.parent.mkdir(exist_ok=True)
    state.write_text("".join(line + "\n" for line in lines))


def lines(done: subprocess.CompletedProcess) -> list[str]:
    return done.stdout.splitlines()


# --- fake nvidia-smi ------------------------------------------------------------------


def test_utilisation_and_memory_come_from_the_state(smi, state):
    write_state(state, f"gpu\t{UUID[1]}\t85\t9216")
    out = lines(smi("--query-gpu=index,uuid,utilization.gpu,memory.used,memory.total,memory.free",
                    "--format=csv,noheader,nounits"))
    assert out == [f"0, {UUID[0]}, 0, 0, {TOTAL}, {TOTAL}",
                   f"1, {UUID[1]}, 85, 9216, {TOTAL}, {TOTAL - 9216}",
                   f"2, {UUID[2]}, 0, 0, {TOTAL}, {TOTAL}",
                   f"3, {UUID[3]}, 0, 0, {TOTAL}, {TOTAL}"]


def test_without_state_every_gpu_is_idle(smi, state):
    assert not state.exists()
    assert lines(smi(*SAMPLER_GPUS)) == [f"{i}, {u}, Tesla T4, 0, 0, {TOTAL}"
                                         for i, u in enumerate(UUID)]
    assert lines(smi(*SAMPLER_APPS)) == []


def test_memory_is_clamped_to_total_and_utilisation_to_100(smi, state):
    write_state(state, f"gpu\t{UUID[0]}\t250\t99999", f"proc\t{UUID[0]}\t7\t99999\tpython")
    assert lines(smi("--query-gpu=utilization.gpu,memory.used,memory.free", "-i", "0",
                     "--format=csv,noheader,nounits")) == [f"100, {TOTAL}, 0"]
    assert lines(smi(*SAMPLER_APPS)) == [f"{UUID[0]}, 7, {TOTAL}"]


def test_comments_malformed_lines_and_case_are_handled(smi, state):
    write_state(state,
                f"# gpu\t{UUID[0]}\t50\t50",
                f"gpu\t{UUID[0]}\thigh\t10",          # not a number
                f"gpu\t{UUID[1]}\t10",                # too short
                f"gpu\t{UUID[2]}\t-5\t10",            # negative
                f"proc\t{UUID[0]}\t1\t10",            # no process name column
                "gpu\tGPU-unknown\t99\t99",           # not in the inventory
                f"gpu\t{UUID[3].upper()}\t30\t300\r",  # UUIDs compare like nvidia-smi's
                f"gpu\t{UUID[3]}\t40\t400")            # the last line for a GPU wins
    out = lines(smi("--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"))
    assert out == ["0, 0", "0, 0", "0, 0", "40, 400"]
    assert lines(smi(*SAMPLER_APPS)) == []


def test_query_units_and_header(smi, state):
    write_state(state, f"gpu\t{UUID[0]}\t85\t9216")
    out = lines(smi("--query-gpu=index,utilization.gpu,memory.used,memory.free", "-i", "0",
                    "--format=csv"))
    assert out == ["index, utilization.gpu [%], memory.used [MiB], memory.free [MiB]",
                   f"0, 85 %, 9216 MiB, {TOTAL - 9216} MiB"]


def test_compute_apps_only_on_visible_gpus_in_container_order(smi, state):
    write_state(state,
                f"proc\t{UUID[3]}\t300\t3000\tpython3",
                f"proc\t{UUID[0]}\t100\t1000\tnot-granted",
                f"proc\t{UUID[1]}\t200\t2000\tpython",
                f"proc\t{UUID[3]}\t301\t3001\tjupyter")
    out = lines(smi("--query-compute-apps=gpu_uuid,pid,used_memory,process_name",
                    "--format=csv,noheader,nounits", visible="1,3"))
    assert out == [f"{UUID[1]}, 200, 2000, python",  # host PIDs, as written
                   f"{UUID[3]}, 300, 3000, python3",
                   f"{UUID[3]}, 301, 3001, jupyter"]
    assert lines(smi("--query-compute-apps=pid", "--format=csv,noheader", "-i", "1",
                     visible="1,3")) == ["300", "301"]
    assert len(lines(smi(*SAMPLER_APPS))) == 4  # the host view grants all


def test_compute_apps_header_names_and_units_like_the_real_one(smi, state):
    write_state(state, f"proc\t{UUID[2]}\t12345\t9000\tpython")
    out = lines(smi("--query-compute-apps=gpu_uuid,pid,used_memory,name", "--format=csv"))
    assert out == ["gpu_uuid, pid, used_gpu_memory [MiB], process_name",
                   f"{UUID[2]}, 12345, 9000 MiB, python"]


def test_compute_apps_without_processes(smi, state):
    write_state(state, f"proc\t{UUID[0]}\t1\t10\tpython")
    assert smi(*SAMPLER_APPS, visible="2").stdout == ""  # nothing at all with noheader
    assert lines(smi("--query-compute-apps=pid,used_memory", "--format=csv",
                     visible="2")) == ["pid, used_gpu_memory [MiB]"]


def test_compute_apps_rejects_what_the_real_one_rejects(smi):
    assert smi("--query-compute-apps=pid", check=False).returncode == 2  # no --format
    bad = smi("--query-compute-apps=pid,utilization.gpu", "--format=csv", check=False)
    assert bad.returncode == 2 and '"utilization.gpu" is not a valid field' in bad.stderr


def test_containers_still_renumber_from_zero(smi, state):
    write_state(state, f"gpu\t{UUID[3]}\t85\t9216", f"gpu\t{UUID[1]}\t10\t100")
    out = lines(smi(*SAMPLER_GPUS, visible=f"{UUID[3]},1"))  # host order, whatever the order here
    assert out == [f"0, {UUID[1]}, Tesla T4, 10, 100, {TOTAL}",
                   f"1, {UUID[3]}, Tesla T4, 85, 9216, {TOTAL}"]
    assert lines(smi("-L", visible="3")) == [f"GPU 0: Tesla T4 (UUID: {UUID[3]})"]


def test_table_shows_utilisation_memory_and_processes(smi, state):
    write_state(state, f"gpu\t{UUID[3]}\t85\t9216", f"proc\t{UUID[3]}\t12345\t9000\tpython")
    table = smi(visible="3").stdout
    assert "9216MiB / 15360MiB |     85%      Default |" in table
    row = next(line for line in table.splitlines() if "12345" in line)
    assert row.split() == ["|", "0", "N/A", "N/A", "12345", "C", "python", "9000MiB", "|"]
    widths = {len(line) for line in table.splitlines() if line}
    assert widths == {91}, f"ragged table:\n{table}"
    idle = smi(visible="0").stdout
    assert "0MiB / 15360MiB |      0%      Default |" in idle
    assert "No running processes found" in idle


# --- fake hook --------------------------------------------------------------------------


def test_bind_mount_command_enters_the_containers_mount_namespace(hook):
    cmd = hook.bind_mount_command(4242, "/var/lib/gpuhub-gpu-double/state",
                                  "/run/bundle/rootfs/etc/gpuhub-gpu-double-state",
                                  nsenter="/usr/bin/nsenter", mount="/usr/bin/mount")
    assert cmd == ["/usr/bin/nsenter", "--target", "4242", "--mount", "--",
                   "/usr/bin/mount", "--bind", "-o", "ro", "/var/lib/gpuhub-gpu-double/state",
                   "/run/bundle/rootfs/etc/gpuhub-gpu-double-state"]


def test_bind_mount_command_finds_util_linux_without_a_path(hook, monkeypatch):
    monkeypatch.setenv("PATH", "")  # runc may give hooks no PATH at all
    cmd = hook.bind_mount_command("17", "/src", "/dst")
    assert os.path.isabs(cmd[0]) and os.path.basename(cmd[0]) == "nsenter"
    assert os.path.isabs(cmd[5]) and os.path.basename(cmd[5]) == "mount"
    assert cmd[2] == "17"


def _bundle(tmp_path: Path, hook, monkeypatch,
            inventory_json: dict = INVENTORY) -> tuple[Path, dict]:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs" / "etc").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(
        {"root": {"path": "rootfs"}, "process": {"env": ["NVIDIA_VISIBLE_DEVICES=1"]}}))
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps(inventory_json))
    monkeypatch.setattr(hook, "INVENTORY", str(inventory))
    monkeypatch.setattr(hook, "STATE_DIR", str(tmp_path / "host" / "state"))
    monkeypatch.setattr(os, "fchown", lambda *a: None)  # the hook runs as root; tests need not
    # pid: ours, so that the check through /proc/<pid>/root sees this test's directories
    return bundle, {"id": "c0ffee", "pid": os.getpid(), "bundle": str(bundle)}


def _prestart(hook, monkeypatch, oci_state: dict) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(oci_state)))
    return hook.main(["nvidia-container-runtime-hook", "prestart"])


def test_prestart_mounts_the_host_state_read_only(tmp_path, hook, monkeypatch):
    bundle, oci_state = _bundle(tmp_path, hook, monkeypatch)
    ran = []
    monkeypatch.setattr(hook, "run", lambda cmd: ran.append(cmd) or SimpleNamespace(returncode=0))
    assert _prestart(hook, monkeypatch, oci_state) == 0
    target = bundle / "rootfs" / "etc" / "gpuhub-gpu-double-state"
    assert target.is_dir()
    host = tmp_path / "host" / "state"
    assert stat.S_IMODE(host.stat().st_mode) == 0o755  # created, so the bind always works
    assert ran == [hook.bind_mount_command(os.getpid(), str(host), str(target))]
    assert ran[0][ran[0].index("--bind") + 1:] == ["-o", "ro", str(host), str(target)]
    assert (bundle / "rootfs" / "usr" / "local" / "bin" / "nvidia-smi").is_file()


@pytest.mark.parametrize("outcome, logged", [
    (SimpleNamespace(returncode=32, stderr="mount: permission denied"), "failed (32): mount: perm"),
    (FileNotFoundError("/usr/bin/nsenter"), "GPU state not mounted: FileNotFoundError"),
    (subprocess.TimeoutExpired("nsenter", 10), "GPU state not mounted: TimeoutExpired"),
])
def test_a_failed_mount_never_fails_the_container_start(tmp_path, hook, monkeypatch, outcome,
                                                        logged):
    bundle, oci_state = _bundle(tmp_path, hook, monkeypatch)

    def run(cmd):
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(hook, "run", run)
    assert _prestart(hook, monkeypatch, oci_state) == 0
    log = Path(hook.LOG).read_text()
    assert logged in log, log
    assert (bundle / "rootfs" / "usr" / "local" / "bin" / "nvidia-smi").is_file()


def test_no_mount_without_a_pid(tmp_path, hook, monkeypatch):
    _, oci_state = _bundle(tmp_path, hook, monkeypatch)
    del oci_state["pid"]
    monkeypatch.setattr(hook, "run", lambda cmd: pytest.fail(f"ran {cmd}"))
    assert _prestart(hook, monkeypatch, oci_state) == 0
    assert "no pid" in Path(hook.LOG).read_text()


def test_mount_target_must_be_a_plain_directory_in_the_container(tmp_path, hook):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    pid = os.getpid()
    assert hook.plain_dir_in(pid, str(tmp_path / "real"))
    assert not hook.plain_dir_in(pid, str(tmp_path / "link"))
    assert not hook.plain_dir_in(pid, str(tmp_path / "missing"))


def test_the_state_paths_are_spelled_alike_everywhere(hook):
    assert hook.STATE_DIR == gpu_state.STATE_DIR  # the default, with no env
    assert hook.CONTAINER_STATE_DIR == gpu_state.CONTAINER_STATE_DIR
    smi = (DOUBLE / "nvidia-smi").read_text()
    assert f"{gpu_state.CONTAINER_STATE_DIR}/{gpu_state.STATE_FILE}" in smi
    install = (DOUBLE / "install.sh").read_text()
    assert f"STATE={gpu_state.STATE_DIR} " in install
    assert f"$STATE}}/{gpu_state.STATE_FILE}" in install  # the host wrapper's state file


# --- tests/support/gpu_state.py ---------------------------------------------------------


def test_gpu_state_round_trip_through_the_fake_nvidia_smi(smi, state):
    path = gpu_state.write({UUID[1]: (85, 9216)}, [(UUID[1], 12345, 9000, "python")],
                           state_dir=state.parent)
    assert path == state
    assert stat.S_IMODE(state.stat().st_mode) == 0o644
    assert os.listdir(state.parent) == ["gpus.tsv"]  # no temporary file left behind
    assert lines(smi(*SAMPLER_GPUS, visible="1")) == [f"0, {UUID[1]}, Tesla T4, 85, 9216, {TOTAL}"]
    assert lines(smi(*SAMPLER_APPS, visible="1")) == [f"{UUID[1]}, 12345, 9000"]
    assert lines(smi(*SAMPLER_APPS, visible="0")) == []

    gpu_state.write({UUID[1]: (5, 10)}, state_dir=state.parent)  # replaces, never appends
    assert lines(smi(*SAMPLER_GPUS, visible="1")) == [f"0, {UUID[1]}, Tesla T4, 5, 10, {TOTAL}"]
    assert lines(smi(*SAMPLER_APPS)) == []

    gpu_state.clear(state_dir=state.parent)
    gpu_state.clear(state_dir=state.parent)  # harmless twice
    assert lines(smi(*SAMPLER_GPUS, visible="1")) == [f"0, {UUID[1]}, Tesla T4, 0, 0, {TOTAL}"]


def test_gpu_state_defaults_to_the_hooks_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUHUB_GPU_DOUBLE_STATE", raising=False)
    assert gpu_state.host_state_dir() == Path(gpu_state.STATE_DIR)
    monkeypatch.setenv("GPUHUB_GPU_DOUBLE_STATE", str(tmp_path))
    assert gpu_state.write({UUID[0]: (1, 2)}) == tmp_path / "gpus.tsv"


@pytest.mark.parametrize("gpus, processes", [
    ({UUID[0]: (101, 0)}, ()),
    ({UUID[0]: (50, -1)}, ()),
    ({"GPU-a\tb": (50, 1)}, ()),
    ({}, [(UUID[0], 1, 10, "two\nlines")]),
    ({}, [(UUID[0], 1, 10, "")]),
])
def test_gpu_state_refuses_what_nvidia_smi_would_ignore(tmp_path, gpus, processes):
    with pytest.raises(ValueError):
        gpu_state.write(gpus, processes, state_dir=tmp_path)
    assert not (tmp_path / "gpus.tsv").exists()


def test_a_lost_gpu_is_reported_as_the_real_tool_does_and_the_rest_still_read(smi, state):
    """A GPU fallen off the bus (NVML ERROR_GPU_IS_LOST): its line becomes the real message,
    on stdout (NVIDIA/open-gpu-kernel-modules#387), the others are listed, and the exit code
    is 15; its processes are not listed. The sampler must keep the other GPUs' readings."""
    write_state(state, f"gpu\t{UUID[0]}\t40\t100", f"fault\t{UUID[1]}\tlost",
                f"proc\t{UUID[1]}\t77\t50\tpython", f"proc\t{UUID[0]}\t78\t60\tpython")
    lost_line = "Unable to determine the device handle for GPU0000:02:00.0: Unknown Error"
    done = smi(*SAMPLER_GPUS, check=False)
    assert done.returncode == 15 and done.stderr == ""
    assert lines(done) == [f"0, {UUID[0]}, Tesla T4, 40, 100, {TOTAL}", lost_line,
                           f"2, {UUID[2]}, Tesla T4, 0, 0, {TOTAL}",
                           f"3, {UUID[3]}, Tesla T4, 0, 0, {TOTAL}"]
    listed = smi("-L", check=False)
    assert listed.returncode == 15 and lost_line in lines(listed) and len(lines(listed)) == 4
    apps = smi(*SAMPLER_APPS, check=False)
    assert apps.returncode == 15 and lines(apps) == [f"{UUID[0]}, 78, 60"]
    from gpuhub.sampler import service as sampler

    gpus = []
    for line in lines(done):
        try:
            gpus += sampler.parse_gpus(line)
        except ValueError:
            assert line == lost_line
    assert [g["uuid"] for g in gpus] == [UUID[0], UUID[2], UUID[3]]


# --- the hook refuses what the real toolkit refuses ----------------------------------------


def _refusal(tmp_path, hook, monkeypatch, capsys, visible: str, *state_lines: str,
             inventory_json: dict = INVENTORY):
    shutil.rmtree(tmp_path / "bundle", ignore_errors=True)
    bundle, oci_state = _bundle(tmp_path, hook, monkeypatch, inventory_json)
    (bundle / "config.json").write_text(json.dumps(
        {"root": {"path": "rootfs"}, "process": {"env": [f"NVIDIA_VISIBLE_DEVICES={visible}"]}}))
    (tmp_path / "host" / "state").mkdir(parents=True, exist_ok=True)
    (tmp_path / "host" / "state" / "gpus.tsv").unlink(missing_ok=True)
    if state_lines:
        write_state(tmp_path / "host" / "state" / "gpus.tsv", *state_lines)
    monkeypatch.setattr(hook, "run", lambda cmd: SimpleNamespace(returncode=0))
    code = _prestart(hook, monkeypatch, oci_state)
    injected = (bundle / "rootfs" / "usr" / "local" / "bin" / "nvidia-smi").is_file()
    return code, capsys.readouterr().err, injected


@pytest.mark.parametrize("visible", [
    "1", UUID[2], UUID[2].upper(), f"{UUID[0]},{UUID[3]}", ",3,", "all", "ALL",
])
def test_the_hook_accepts_what_the_real_cli_selects(tmp_path, hook, monkeypatch, capsys, visible):
    """libnvidia-container src/cli/common.c select_devices: a full UUID in any case, an index
    below the GPU count, "all", extra commas."""
    assert _refusal(tmp_path, hook, monkeypatch, capsys, visible) == (0, "", True)


@pytest.mark.parametrize("visible, unknown", [
    ("4", "4"), ("1,9", "9"), ("GPU-deadbeef", "GPU-deadbeef"), (UUID[0][:12], UUID[0][:12]),
    ("-1", "-1"), ("MIG-0b1c", "MIG-0b1c"), ("0:1", "0:1"),
])
def test_the_hook_fails_the_start_on_an_unknown_device_as_the_real_cli(
        tmp_path, hook, monkeypatch, capsys, visible, unknown):
    """The real CLI: `<dev>: unknown device` (select_devices), exit 1: runc fails the start.
    inventory-4.json has no MIG instances, so MIG forms are unknown there."""
    code, err, injected = _refusal(tmp_path, hook, monkeypatch, capsys, visible)
    assert (code, injected) == (1, False)
    assert err == f"nvidia-container-cli: device error: {unknown}: unknown device\n"


def test_a_lost_gpu_fails_every_gpu_start_as_the_real_cli(tmp_path, hook, monkeypatch, capsys):
    """nvc_device_info_new enumerates every GPU and fails on one that is lost: also starts
    that asked only for a healthy GPU (NVIDIA/nvidia-docker#1505). Without a GPU request
    nothing runs (void), so CPU containers still start."""
    lost = f"fault\t{UUID[3]}\tlost"
    code, err, injected = _refusal(tmp_path, hook, monkeypatch, capsys, UUID[0], lost)
    assert (code, injected) == (1, False)
    assert err == "nvidia-container-cli: detection error: nvml error: unknown error\n"
    assert _refusal(tmp_path, hook, monkeypatch, capsys, "void", lost) == (0, "", False)
    assert _refusal(tmp_path, hook, monkeypatch, capsys, UUID[0],
                    f"gpu\t{UUID[3]}\t5\t10") == (0, "", True)


def test_the_installed_hook_exits_1_on_a_refusal(tmp_path):
    """As runc runs it: the process's exit code and stderr carry the refusal."""
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(
        {"root": {"path": "rootfs"}, "process": {"env": ["NVIDIA_VISIBLE_DEVICES=7"]}}))
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps(INVENTORY))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "GPUHUB_GPU_DOUBLE_INVENTORY": str(inventory),
           "GPUHUB_GPU_DOUBLE_LOG": str(tmp_path / "hook.log"),
           "GPUHUB_GPU_DOUBLE_STATE": str(tmp_path / "state")}
    done = subprocess.run([str(DOUBLE / "nvidia-container-runtime-hook"), "prestart"],
                          input=json.dumps({"id": "c1", "bundle": str(bundle)}), env=env,
                          capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (
        1, "nvidia-container-cli: device error: 7: unknown device\n")


def test_a_gone_gpu_is_neither_listed_nor_given(tmp_path, hook, monkeypatch, capsys, smi, state):
    """A GPU the driver no longer sees (removed, or replaced by one with another UUID after
    `invoke up` listed it): nvidia-smi does not list it and the CLI calls it unknown."""
    gone = f"fault\t{UUID[1]}\tgone"
    code, err, _ = _refusal(tmp_path, hook, monkeypatch, capsys, UUID[1], gone)
    assert (code, err) == (1, f"nvidia-container-cli: device error: {UUID[1]}: unknown device\n")
    assert _refusal(tmp_path, hook, monkeypatch, capsys, UUID[2], gone)[0] == 0
    write_state(state, gone)
    assert [line.split(", ")[1] for line in lines(smi(*SAMPLER_GPUS))] == [UUID[0], UUID[2], UUID[3]]
    assert smi("-L", visible=UUID[1], check=False).returncode == 6


# --- the CDI path (Docker >= 29.2): the runtime shim's edits, then the hook ----------------


def load_runtime():
    return load_script("nvidia-container-runtime")


def _gpu_request_bundle(tmp_path: Path, visible: str) -> Path:
    """A bundle as Docker 20.10 makes it for a GPU request: the env and the legacy hook."""
    bundle = tmp_path / "cdi-bundle"
    (bundle / "rootfs").mkdir(parents=True, exist_ok=True)
    (bundle / "config.json").write_text(json.dumps({
        "root": {"path": "rootfs"},
        "process": {"env": ["PATH=/usr/bin", f"NVIDIA_VISIBLE_DEVICES={visible}"]},
        "hooks": {"prestart": [{"path": "/usr/bin/true"},
                               {"path": "/x/bin/nvidia-container-runtime-hook",
                                "args": ["nvidia-container-runtime-hook", "prestart"]}]}}))
    return bundle


def test_the_cdi_path_leaves_void_in_the_lab_and_the_grant_with_the_hook(tmp_path, monkeypatch):
    runtime = load_runtime()
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps(INVENTORY))
    monkeypatch.setattr(runtime, "INVENTORY", str(inventory))
    bundle = _gpu_request_bundle(tmp_path, f"{UUID[2]},1")
    runtime.to_cdi(str(bundle))
    spec = json.loads((bundle / "config.json").read_text())
    assert [kv for kv in spec["process"]["env"] if kv.startswith("NVIDIA_VISIBLE")] == [
        "NVIDIA_VISIBLE_DEVICES=void"]
    hooks = spec["hooks"]["prestart"]
    assert hooks[0] == {"path": "/usr/bin/true"} and len(hooks) == 2  # the legacy hook is gone
    assert hooks[1]["path"] == str(DOUBLE / "nvidia-container-runtime-hook")
    assert f"GPUHUB_GPU_DOUBLE_CDI_DEVICES={UUID[2]},1" in hooks[1]["env"]


@pytest.mark.parametrize("visible", ["void", "", "none"])
def test_the_cdi_path_leaves_starts_without_gpus_alone(tmp_path, monkeypatch, visible):
    runtime = load_runtime()
    bundle = _gpu_request_bundle(tmp_path, visible)
    before = (bundle / "config.json").read_text()
    runtime.to_cdi(str(bundle))
    assert (bundle / "config.json").read_text() == before


@pytest.mark.parametrize("unknown", ["4", UUID[0].upper(), "GPU-deadbeef"])
def test_the_cdi_path_fails_a_device_its_spec_does_not_name(tmp_path, monkeypatch, capsys, unknown):
    """CDI device names are exact: the index, the UUID as nvidia-smi prints it, all."""
    runtime = load_runtime()
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps(INVENTORY))
    monkeypatch.setattr(runtime, "INVENTORY", str(inventory))
    with pytest.raises(SystemExit) as exited:
        runtime.to_cdi(str(_gpu_request_bundle(tmp_path, unknown)))
    assert exited.value.code == 1
    assert capsys.readouterr().err == f"unresolvable CDI devices nvidia.com/gpu={unknown}\n"


def test_on_the_cdi_path_the_hook_gives_the_cdi_devices_and_runs_no_nvml(
        tmp_path, hook, monkeypatch, capsys):
    """The container's env says void; the grant comes with the hook. A lost GPU does not
    fail the start: CDI injects device nodes, nothing enumerates the GPUs."""
    monkeypatch.setenv("GPUHUB_GPU_DOUBLE_CDI_DEVICES", UUID[2])
    code, err, injected = _refusal(tmp_path, hook, monkeypatch, capsys, "void",
                                   f"fault\t{UUID[3]}\tlost")
    assert (code, err, injected) == (0, "", True)
    tsv = (tmp_path / "bundle" / "rootfs" / "etc" / "gpuhub-fake-gpus.tsv").read_text()
    assert tsv.splitlines()[0] == f"#visible_devices\t{UUID[2]}"


# --- driver states and the infoROM fault, as the real tool reports them -------------------


def test_a_driver_library_mismatch_fails_every_query_on_stdout_in_two_lines(
        smi, state, tmp_path, hook, monkeypatch, capsys):
    """R5xx after an upgrade without a reboot (tinygrad/open-gpu-kernel-modules#47), errors
    on stdout (utkuozdemir/nvidia_gpu_exporter#63); at start the CLI's initialization error
    (labdao/plex#18). The exit code is not in nvidia-smi's manual: 18 is NVML's
    ERROR_LIB_RM_VERSION_MISMATCH."""
    write_state(state, "driver\tmismatch")
    for args in (SAMPLER_GPUS, ("-L",), SAMPLER_APPS):
        done = smi(*args, check=False)
        assert (done.returncode, done.stderr) == (18, "")
        assert lines(done) == ["Failed to initialize NVML: Driver/library version mismatch",
                               "NVML library version: 570.124"]
    code, err, _ = _refusal(tmp_path, hook, monkeypatch, capsys, UUID[0], "driver\tmismatch")
    assert (code, err) == (1, "nvidia-container-cli: initialization error: nvml error: "
                              "driver/library version mismatch\n")


def test_nvml_lost_after_a_daemon_reload_hits_only_containers_started_before(smi, state,
                                                                           monkeypatch):
    """NVIDIA/nvidia-container-toolkit#48: containers started before `systemctl
    daemon-reload` print "Failed to initialize NVML: Unknown Error"; recreated ones read."""
    import time as clock
    write_state(state, f"driver\tnvml-lost\t{int(clock.time()) + 60}")  # after this "start"
    done = smi(*SAMPLER_GPUS, check=False)
    assert (done.returncode, lines(done)) == (255, ["Failed to initialize NVML: Unknown Error"])
    write_state(state, f"driver\tnvml-lost\t{int(clock.time()) - 60}")  # started after it
    assert len(lines(smi(*SAMPLER_GPUS))) == 4
    write_state(state, f"driver\tnvml-lost\t{int(clock.time()) + 60}")
    monkeypatch.setenv("GPUHUB_FAKE_SMI_HOST", "1")  # the host keeps its devices
    env_host = subprocess.run(
        ["sh", str(DOUBLE / "nvidia-smi"), *SAMPLER_GPUS], capture_output=True, text=True,
        env={"PATH": os.environ["PATH"], "GPUHUB_FAKE_SMI_HOST": "1",
             "GPUHUB_FAKE_GPUS_FILE": str(state.parent.parent / "gpus.tsv"),
             "GPUHUB_FAKE_GPU_STATE": str(state)})
    assert env_host.returncode == 0 and len(env_host.stdout.splitlines()) == 4


def test_a_corrupted_inforom_exits_14_with_valid_data(smi, state):
    """GPU Operator troubleshooting: rc 14 with a full, valid table."""
    write_state(state, f"fault\t{UUID[2]}\tinforom", f"gpu\t{UUID[2]}\t30\t100")
    done = smi(*SAMPLER_GPUS, check=False)
    assert done.returncode == 14 and f"2, {UUID[2]}, Tesla T4, 30, 100, {TOTAL}" in lines(done)
    assert smi(*SAMPLER_GPUS, visible="0", check=False).returncode == 0  # not this container's


def test_a_gpu_in_error_after_an_xid_reads_requires_reset_and_err_in_the_table(smi, state):
    """After an Xid (a firmware crash, a double-bit ECC error) the GPU stays listed, its
    utilisation and temperature read "[GPU requires reset]" in CSV queries while its memory
    still reads, and the table shows ERR! (NVIDIA/nvidia-docker#1280, and users' outputs
    such as `0, [GPU requires reset], [GPU requires reset], 0 MiB`). No other GPU changes."""
    write_state(state, f"fault\t{UUID[1]}\treset", f"gpu\t{UUID[1]}\t30\t100")
    done = smi("--query-gpu=index,temperature.gpu,utilization.gpu,memory.used",
               "--format=csv,noheader")
    assert done.returncode == 0
    assert lines(done)[:2] == ["0, 34, 0 %, 0 MiB",
                               "1, [GPU requires reset], [GPU requires reset], 100 MiB"]
    assert f"1, {UUID[1]}, Tesla T4, [GPU requires reset], 100, {TOTAL}" in lines(
        smi(*SAMPLER_GPUS))
    assert len(lines(smi("-L"))) == 4
    table = smi().stdout
    assert table.count("ERR!") == 4 and "| ERR!  ERR!  ERR!" in table


def test_a_hung_driver_never_answers(smi, state):
    write_state(state, "driver\thang")
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(["sh", str(DOUBLE / "nvidia-smi"), "-L"], timeout=1, capture_output=True,
                       env={"PATH": os.environ["PATH"], "GPUHUB_FAKE_GPU_STATE": str(state),
                            "GPUHUB_FAKE_GPUS_FILE": str(DOUBLE / "inventory-4.json")})


def test_mig_mode_is_not_applicable_on_the_doubles_t4(smi):
    """A Tesla T4 is not MIG-capable: the real tool prints [N/A] for its MIG mode."""
    assert lines(smi("--query-gpu=index,mig.mode.current", "--format=csv,noheader")) == [
        f"{i}, [N/A]" for i in range(4)]


@pytest.mark.parametrize("toolkit, passed", [("1.18.2", False), ("1.18.0", False),
                                             ("1.19.0", True), ("1.17.8", True)])
def test_a_swarm_node_on_toolkit_1_18_ignores_swarms_grant(tmp_path, monkeypatch, toolkit, passed):
    """Toolkit 1.18.x's default mode (jit-cdi) did not pass swarm-resource on (fixed in
    1.19.0, NVIDIA/nvidia-container-toolkit a290bcf8): the hook never sees Swarm's grant."""
    runtime = load_runtime()
    monkeypatch.setenv("GPUHUB_GPU_DOUBLE_TOOLKIT", toolkit)
    monkeypatch.setenv("GPUHUB_GPU_DOUBLE_SWARM_RESOURCE", "DOCKER_RESOURCE_NVIDIA-GPU")
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"process": {"env": []}}))
    runtime.add_hook(str(bundle))
    env = json.loads((bundle / "config.json").read_text())["hooks"]["prestart"][0]["env"]
    assert ("GPUHUB_GPU_DOUBLE_SWARM_RESOURCE=DOCKER_RESOURCE_NVIDIA-GPU" in env) is passed


# --- MIG (inventory-mig.json: GPU 0 in MIG mode with 4 instances, GPU 1 whole) -----------


def test_mig_instances_are_listed_under_their_gpu_as_the_real_tool_prints_them(smi):
    """R470+ `nvidia-smi -L`: each instance indented under its GPU, the profile padded to
    the column the real tool uses (DataDog/datadog-agent#33120, instaslice's README)."""
    assert lines(smi("-L", inventory_json=MIG_INVENTORY)) == [
        f"GPU 0: NVIDIA A100-SXM4-40GB (UUID: {MIG_GPU[0]})",
        f"  MIG 3g.20gb     Device  0: (UUID: {MIG[0]})",
        f"  MIG 2g.10gb     Device  1: (UUID: {MIG[1]})",
        f"  MIG 1g.5gb      Device  2: (UUID: {MIG[2]})",
        f"  MIG 1g.5gb      Device  3: (UUID: {MIG[3]})",
        f"GPU 1: NVIDIA A100-SXM4-40GB (UUID: {MIG_GPU[1]})"]


def test_query_gpu_lists_whole_gpus_with_mig_mode_and_no_utilisation_in_mig_mode(smi, state):
    """--query-gpu never lists instances; NVML has no utilisation for a GPU in MIG mode
    (NVIDIA/go-nvml#57, utkuozdemir/nvidia_gpu_exporter#203): [N/A], and no unit after it."""
    write_state(state, f"gpu\t{MIG_GPU[0]}\t85\t1024", f"gpu\t{MIG_GPU[1]}\t40\t2048")
    out = lines(smi("--query-gpu=index,uuid,utilization.gpu,utilization.memory,memory.used,"
                    "memory.total,mig.mode.current", "--format=csv,noheader",
                    inventory_json=MIG_INVENTORY))
    assert out == [f"0, {MIG_GPU[0]}, [N/A], [N/A], 1024 MiB, 40960 MiB, Enabled",
                   f"1, {MIG_GPU[1]}, 40 %, 0 %, 2048 MiB, 40960 MiB, Disabled"]


@pytest.mark.parametrize("visible, shown", [
    (MIG[2], [2]), (MIG[2].upper(), [2]), ("0:2", [2]), (f"0:3,{MIG[0]}", [0, 3]),
])
def test_a_container_given_mig_instances_sees_only_them_under_their_gpu(smi, visible, shown):
    """select_mig_device adds the instance and its parent GPU: the container lists the
    parent and only its own instances, numbered from 0 (a pod given one 1g.5gb, instaslice's
    README)."""
    assert lines(smi("-L", visible=visible, inventory_json=MIG_INVENTORY)) == [
        f"GPU 0: NVIDIA A100-SXM4-40GB (UUID: {MIG_GPU[0]})"] + [
        f"  MIG {MIG_INVENTORY['gpus'][0]['mig'][k]['profile']:<11} Device {n:2d}: (UUID: {MIG[k]})"
        for n, k in enumerate(shown)]


def test_a_whole_gpu_in_mig_mode_shows_no_instance(smi):
    assert lines(smi("-L", visible="0", inventory_json=MIG_INVENTORY)) == [
        f"GPU 0: NVIDIA A100-SXM4-40GB (UUID: {MIG_GPU[0]})"]


@pytest.mark.parametrize("visible", [MIG[1], MIG[3].upper(), "0:0", "0:3", f"1,{MIG[2]}", "all"])
def test_the_hook_accepts_mig_instances_as_the_real_cli(tmp_path, hook, monkeypatch, capsys,
                                                        visible):
    """select_mig_device: a MIG UUID in any case, or <gpu index>:<MIG index>."""
    assert _refusal(tmp_path, hook, monkeypatch, capsys, visible,
                    inventory_json=MIG_INVENTORY) == (0, "", True)


@pytest.mark.parametrize("visible", [
    f"MIG-{MIG_GPU[0]}/1/0", "0:4", "1:0", "2:0", MIG[0][:20], "0:1:2", "0:x",
])
def test_the_hook_refuses_the_old_mig_form_and_unknown_instances(tmp_path, hook, monkeypatch,
                                                                  capsys, visible):
    """R470+ drivers name instances MIG-<uuid>: the old MIG-GPU-<uuid>/<gi>/<ci> is an
    unknown device (NVIDIA/nvidia-container-toolkit#203); so is an index past the GPU's
    instances or a GPU without any."""
    code, err, injected = _refusal(tmp_path, hook, monkeypatch, capsys, visible,
                                   inventory_json=MIG_INVENTORY)
    assert (code, injected) == (1, False)
    assert err == f"nvidia-container-cli: device error: {visible}: unknown device\n"


def test_the_cdi_spec_names_mig_instances_by_index_and_uuid(tmp_path, monkeypatch, capsys):
    runtime = load_runtime()
    assert {"0:0", "0:3", MIG[2]} <= runtime.cdi_names(MIG_INVENTORY)
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps(MIG_INVENTORY))
    monkeypatch.setattr(runtime, "INVENTORY", str(inventory))
    with pytest.raises(SystemExit):
        runtime.to_cdi(str(_gpu_request_bundle(tmp_path, "0:4")))
    assert capsys.readouterr().err == "unresolvable CDI devices nvidia.com/gpu=0:4\n"


@pytest.mark.parametrize("inventory_json, advertised", [(INVENTORY, UUID), (MIG_INVENTORY, MIG_GPU[1:])])
def test_node_adds_snippet_advertises_whole_gpus_never_one_in_mig_mode(
        tmp_path, hook, state, inventory_json, advertised):
    """`invoke node-add`'s daemon.json step, run against the double: a GPU in MIG mode is not
    advertised to Swarm (swarm mode hands out whole GPUs; its instances would be unusable)."""
    from gpuhub.core import swarm

    table = tmp_path / "gpus.tsv"
    table.write_bytes(hook.to_tsv(inventory_json, "all"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(
        f"#!/bin/sh\nGPUHUB_FAKE_GPUS_FILE={table} GPUHUB_FAKE_GPU_STATE={state} "
        f"exec sh {DOUBLE / 'nvidia-smi'} \"$@\"\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    text = swarm.node_add_text(join_command="docker swarm join x", kind="NVIDIA-GPU", labels={})
    daemon_json = tmp_path / "daemon.json"
    snippet = text.split("<<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    snippet = snippet.replace('"/etc/docker/daemon.json"', repr(str(daemon_json)))
    done = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"})
    assert done.returncode == 0, done.stderr
    conf = json.loads(daemon_json.read_text())
    assert conf["node-generic-resources"] == [f"NVIDIA-GPU={u}" for u in advertised]
    if inventory_json is MIG_INVENTORY:
        assert f"not advertising {MIG_GPU[0]} (MIG mode" in done.stdout, done.stdout
