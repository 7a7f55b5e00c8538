"""GPU telemetry: the sampler's parsing, attribution and idle time; the hub's table and metrics."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.utils import floatToGoString

from gpuhub.core import files
from gpuhub.core.gpureport import Lab, as_text, report
from gpuhub.core.gpus import Gpu
from gpuhub.hub import telemetry
from gpuhub.sampler import service as sampler

A, B = "GPU-aaaa", "GPU-bbbb"
LAB_A = "a" * 64
LAB_B = "b" * 64


# --- the sampler -----------------------------------------------------------------------

def test_parse_gpus_reads_numbers_and_names_with_commas():
    text = ("0, GPU-aaaa, Tesla T4, 85, 9216, 15360\n"
            "1, GPU-bbbb, NVIDIA A100-SXM4-40GB, MIG 1g.5gb, [N/A], 0, 40960\n")
    gpus = sampler.parse_gpus(text)
    assert gpus[0] == {"index": "0", "uuid": A, "name": "Tesla T4", "utilisation": 85,
                       "memory_used_mib": 9216, "memory_total_mib": 15360}
    assert gpus[1]["name"] == "NVIDIA A100-SXM4-40GB, MIG 1g.5gb"
    assert gpus[1]["utilisation"] is None  # not reported: never counted idle


def test_parse_gpus_refuses_a_line_it_does_not_understand():
    with pytest.raises(ValueError, match="unexpected nvidia-smi line 'garbage'"):
        sampler.parse_gpus("garbage\n")


def test_parse_processes():
    assert sampler.parse_processes(f"{A}, 4242, 9000\n\n") == [
        {"gpu_uuid": A, "pid": 4242, "used_mib": 9000}]
    with pytest.raises(ValueError):
        sampler.parse_processes(f"{A}, not-a-pid, 9000\n")


@pytest.mark.parametrize("cgroup", [
    f"12:memory:/docker/{LAB_A}\n0::/docker/{LAB_A}\n",                  # cgroupfs driver
    f"0::/system.slice/docker-{LAB_A}.scope\n",                          # systemd driver
    f"0::/system.slice/docker-{LAB_A}.scope/init.scope\n",               # nested
    f"12:memory:/gpuhub-gpuhub-labs/{LAB_A}\n",                          # labs' parent
    f"0::/gpuhub.slice/gpuhub-gpuhub.slice/gpuhub-gpuhub-labs.slice/docker-{LAB_A}.scope\n",
    # cgroup v2, read from the sampler's own (private) cgroup namespace, Docker's default
    # there: a lab outside the sampler's root shows "../" entries (cgroup_namespaces(7)).
    f"0::/../{LAB_A}\n",                                                  # cgroupfs driver
    f"0::/../docker-{LAB_A}.scope\n",                                     # systemd driver
    f"0::/../../gpuhub-gpuhub-labs/{LAB_A}\n",                            # labs' parent
])
def test_container_of_a_process_from_its_cgroup(tmp_path, cgroup):
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "cgroup").write_text(cgroup)
    assert sampler.container_of(77, tmp_path) == LAB_A


def test_a_process_outside_docker_or_gone_has_no_container(tmp_path):
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "cgroup").write_text("0::/user.slice/user-1000.slice/session-3.scope\n")
    assert sampler.container_of(5, tmp_path) == ""
    assert sampler.container_of(6, tmp_path) == ""  # exited meanwhile


def gpu(uuid=A, util=0, used=0):
    return {"index": "0", "uuid": uuid, "name": "Tesla T4", "utilisation": util,
            "memory_used_mib": used, "memory_total_mib": 15360}


def test_idle_since_starts_below_the_threshold_and_ends_above_it():
    s = sampler.Sampler(idle_below=5, interval=5)
    assert s.snapshot([gpu(util=50)], [], now=100)["gpus"][0]["idle_since"] is None
    assert s.snapshot([gpu(util=4)], [], now=105)["gpus"][0]["idle_since"] == 105
    assert s.snapshot([gpu(util=0)], [], now=110)["gpus"][0]["idle_since"] == 105
    assert s.snapshot([gpu(util=5)], [], now=115)["gpus"][0]["idle_since"] is None
    unknown = gpu()
    unknown["utilisation"] = None
    assert s.snapshot([unknown], [], now=120)["gpus"][0]["idle_since"] is None


def test_history_is_bounded_and_survives_a_restart():
    s = sampler.Sampler(idle_below=5, interval=5)
    for t in range(sampler.HISTORY_LENGTH + 10):
        doc = s.snapshot([gpu(util=1)], [], now=float(t))
    history = doc["gpus"][0]["history"]
    assert len(history) == sampler.HISTORY_LENGTH and history[-1] == [float(t), 1, 0]
    again = sampler.Sampler(idle_below=5, interval=5)
    again.resume(json.loads(json.dumps(doc)))
    resumed = again.snapshot([gpu(util=1)], [], now=1000.0)["gpus"][0]
    assert resumed["idle_since"] == 0.0  # idle since before the restart
    assert len(resumed["history"]) == sampler.HISTORY_LENGTH


def test_snapshot_attributes_processes_to_containers(tmp_path):
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "cgroup").write_text(f"0::/docker/{LAB_A}\n")
    doc = sampler.Sampler(5, 5).snapshot([gpu()], [{"gpu_uuid": A, "pid": 4242, "used_mib": 10}],
                                         now=1, proc=tmp_path)
    assert doc["processes"] == [{"gpu_uuid": A, "pid": 4242, "used_mib": 10, "container": LAB_A}]


def test_written_atomically_and_readable_by_everyone(tmp_path):
    path = tmp_path / "gpus.json"
    sampler.write_samples(path, {"version": 1})
    assert json.loads(path.read_text()) == {"version": 1}
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["gpus.json"]  # no temp file left


def fake_smi(tmp_path, monkeypatch, script: str) -> None:
    """A real process named nvidia-smi, first on PATH: ``script`` is its shell body
    ("$1" tells the GPU query from the process query)."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir(exist_ok=True)
    smi.write_text("#!/bin/sh\n" + script)
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:{os.environ['PATH']}")


GPU_LINES = (f"0, {A}, NVIDIA A100-SXM4-80GB, 35, 1000, 81920\n"
             f"1, {B}, NVIDIA A100-SXM4-80GB, 0, 0, 81920\n")


def test_read_gpus_says_why_it_read_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert sampler.read_gpus(sampler.Smi(2))[2].startswith(
        "nvidia-smi is missing: the sampler has no GPU")
    fake_smi(tmp_path, monkeypatch, "echo \"NVIDIA-SMI has failed because it couldn't "
             "communicate with the NVIDIA driver.\" >&2; exit 9\n")
    assert sampler.read_gpus(sampler.Smi(2)) == ([], [], (
        "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't communicate with the "
        "NVIDIA driver."))
    # As a real driver prints it after an upgrade without a reboot: on stdout, two lines.
    fake_smi(tmp_path, monkeypatch, "printf 'Failed to initialize NVML: Driver/library version "
             "mismatch\\nNVML library version: 570.124\\n'; exit 18\n")
    assert sampler.read_gpus(sampler.Smi(2))[2] == (
        "nvidia-smi failed: Failed to initialize NVML: Driver/library version mismatch; NVML "
        "library version: 570.124")


def test_a_hung_nvidia_smi_costs_one_interval_not_the_sampler(tmp_path, monkeypatch):
    """It and what it started (which would hold its output open) are killed at the limit."""
    fake_smi(tmp_path, monkeypatch, "sleep 30 & sleep 30\n")
    started = time.monotonic()
    assert sampler.read_gpus(sampler.Smi(1))[2] == "nvidia-smi did not answer within 1 s"
    assert time.monotonic() - started < 1 + sampler.KILL_GRACE + 1


def test_while_one_is_stuck_in_the_driver_no_other_is_started(tmp_path, monkeypatch):
    """A process in uninterruptible sleep survives SIGKILL: the sampler leaves it, says so,
    and starts no second one until it is gone."""
    smi = sampler.Smi(1)
    smi.stuck = subprocess.Popen(["sleep", "30"])  # stands for one the kernel keeps
    fake_smi(tmp_path, monkeypatch, f"touch {tmp_path}/ran\n")
    try:
        assert sampler.read_gpus(smi)[2] == (
            "nvidia-smi did not answer within 1 s and is still stuck (a GPU fault: see the "
            "host's kernel log for Xid)")
        assert not (tmp_path / "ran").exists()
    finally:
        smi.stuck.kill()
        smi.stuck.wait()
    assert sampler.read_gpus(smi)[2] == ""  # gone: nvidia-smi runs again
    assert (tmp_path / "ran").exists()


def test_one_lost_gpu_costs_only_its_own_reading(tmp_path, monkeypatch):
    """The real tool's line for a GPU fallen off the bus (NVIDIA/open-gpu-kernel-modules#387),
    exit code 15 (NVML_ERROR_GPU_IS_LOST): the other GPUs are still read."""
    fake_smi(tmp_path, monkeypatch, f"""if [ "$1" = --query-compute-apps=gpu_uuid,pid,used_memory ]; then
  echo "{A}, 4242, 900"; exit 0; fi
printf '{GPU_LINES}'
echo "Unable to determine the device handle for GPU0000:0B:00.0: Unknown Error"
exit 15
""")
    gpus, processes, error = sampler.read_gpus(sampler.Smi(2))
    assert [g["uuid"] for g in gpus] == [A, B] and processes[0]["pid"] == 4242
    assert error == ("nvidia-smi exited 15: Unable to determine the device handle for "
                     "GPU0000:0B:00.0: Unknown Error; 2 GPU(s) read")


def test_a_gpu_that_needs_a_reset_is_listed_with_its_fault(tmp_path, monkeypatch):
    """After an Xid a GPU stays listed with "[GPU requires reset]" for its utilisation and
    exit 0; CUDA cannot use it: it is listed with its fault (the hub takes it out of service)."""
    fake_smi(tmp_path, monkeypatch, f"""if [ "$1" = --query-compute-apps=gpu_uuid,pid,used_memory ]; then
  exit 0; fi
echo "0, {A}, NVIDIA A100-SXM4-80GB, 35, 1000, 81920"
echo "1, {B}, NVIDIA A100-SXM4-80GB, [GPU requires reset], 0, 81920"
""")
    gpus, _, error = sampler.read_gpus(sampler.Smi(2))
    assert [(g["uuid"], g.get("fault")) for g in gpus] == [(A, None), (B, (
        "GPU 1 needs a reset (it reads [GPU requires reset]; an Xid: see the host's kernel log)"))]
    assert gpus[1]["utilisation"] is None
    assert error == ("nvidia-smi: GPU 1 needs a reset (it reads [GPU requires reset]; an Xid: "
                     "see the host's kernel log); 2 GPU(s) read")


def test_a_nonzero_exit_with_valid_data_keeps_the_data(tmp_path, monkeypatch):
    """rc 14 (infoROM corrupted) comes with a full, valid table; and "No running processes
    found" is no process, not a reason to drop the GPUs."""
    fake_smi(tmp_path, monkeypatch, f"""if [ "$1" = --query-compute-apps=gpu_uuid,pid,used_memory ]; then
  echo "No running processes found"; exit 0; fi
printf '{GPU_LINES}'; exit 14
""")
    gpus, processes, error = sampler.read_gpus(sampler.Smi(2))
    assert [g["utilisation"] for g in gpus] == [35, 0] and processes == []
    assert error == "nvidia-smi exited 14; 2 GPU(s) read"


def test_the_sampler_exits_for_a_restart_when_nvml_stays_lost():
    lost = "nvidia-smi failed: Failed to initialize NVML: Unknown Error"
    assert sampler.nvml_lost([lost] * sampler.NVML_LOST_READS)
    assert not sampler.nvml_lost([lost] * (sampler.NVML_LOST_READS - 1))
    assert not sampler.nvml_lost([lost, "", lost])  # it came back in between
    assert not sampler.nvml_lost(["nvidia-smi did not answer within 2 s"] * 5)


# --- reading the samples in the hub -------------------------------------------------------

def samples(now=1000.0, gpus=None, processes=(), error=""):
    return {"version": 1, "taken_at": now, "interval": 5, "idle_below": 5, "error": error,
            "gpus": gpus if gpus is not None else [], "processes": list(processes)}


def sampled(uuid, util, used, idle_since=None, index="0"):
    return {**gpu(uuid, util, used), "index": index, "idle_since": idle_since,
            "history": [[990.0, util, used], [995.0, util, used]]}


@pytest.mark.parametrize("content, problem", [
    (None, "no reading yet: the gpu-sampler service has written none"),
    ("{not json", "the gpu-sampler's readings cannot be read"),
    (json.dumps({"version": 99}), "in a format this hub does not know"),
    (json.dumps(samples(now=900.0)), "the last reading is 100 s old: the gpu-sampler service "
                                     "is not running"),
])
def test_no_usable_reading_says_why(tmp_path, content, problem):
    path = tmp_path / "gpus.json"
    if content is not None:
        path.write_text(content)
    doc, said = telemetry.read_samples(path, now=1000.0)
    assert doc is None and problem in said


def test_a_driver_error_is_said_with_the_reading(tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps(samples(error="nvidia-smi failed: no driver")))
    doc, said = telemetry.read_samples(path, now=1001.0)
    assert doc["gpus"] == [] and said == "nvidia-smi failed: no driver"


# --- the table ------------------------------------------------------------------------

INVENTORY = [Gpu("0", A, "Tesla T4", 15360), Gpu("1", B, "Tesla T4", 15360)]


def lab(id_, user, gpus, profile="gpu1", since="2026-12-01T10:00:00+00:00"):
    return Lab(id=id_, user=user, profile=profile, gpus=tuple(gpus), since=since)


def test_exclusive_holder_gets_the_gpus_memory_and_idle_time():
    doc = samples(gpus=[sampled(A, 85, 9216), sampled(B, 0, 0, idle_since=1000.0 - 3900,
                                                       index="1")])
    rows = report(INVENTORY, [lab(LAB_A, "alice", [A])], "exclusive", doc, now=1000.0)
    assert rows[0]["holders"] == [{"user": "alice", "profile": "gpu1",
                                   "since": "2026-12-01T10:00:00+00:00", "memory_used_mib": 9216}]
    assert (rows[0]["utilisation"], rows[0]["idle_seconds"], rows[0]["history"]) == (85, 0, [85, 85])
    assert rows[0]["memory_history"] == [9216, 9216]
    assert rows[1]["held_by"] == [] and rows[1]["idle_seconds"] == 3900
    text = as_text(rows)
    assert "alice (gpu1)" in text and "9216 / 15360 MiB" in text and "1 h 05 min" in text


def test_shared_gpu_memory_is_attributed_per_lab_from_its_processes():
    doc = samples(gpus=[sampled(A, 60, 12000)], processes=[
        {"gpu_uuid": A, "pid": 1, "used_mib": 7000, "container": LAB_A},
        {"gpu_uuid": A, "pid": 2, "used_mib": 3000, "container": LAB_B},
        {"gpu_uuid": A, "pid": 3, "used_mib": 2000, "container": ""},   # not in a lab
    ])
    labs = [lab(LAB_A, "alice", [A, B]), lab(LAB_B, "bob", [A, B])]
    row = report(INVENTORY, labs, "shared", doc, now=1000.0)[0]
    assert [(h["user"], h["memory_used_mib"]) for h in row["holders"]] == [
        ("alice", 7000), ("bob", 3000)]
    assert row["unattributed_mib"] == 2000


def test_shared_without_processes_from_the_driver_attributes_nothing():
    doc = samples(gpus=[sampled(A, 60, 12000)])
    labs = [lab(LAB_A, "alice", [A]), lab(LAB_B, "bob", [A])]
    row = report(INVENTORY, labs, "shared", doc, now=1000.0)[0]
    assert [h["memory_used_mib"] for h in row["holders"]] == [None, None]
    assert row["unattributed_mib"] == 12000


def test_without_samples_the_table_still_says_who_holds_what():
    rows = report(INVENTORY, [lab(LAB_A, "alice", [B])], "exclusive", None)
    assert [r["held_by"] for r in rows] == [[], ["alice"]]
    assert all(r["utilisation"] is None and r["idle_seconds"] is None for r in rows)
    assert "? / 15360 MiB" in as_text(rows)


def test_a_gpu_known_by_index_only_is_matched_by_index():
    doc = samples(gpus=[sampled(B, 40, 100, index="1")])
    rows = report([Gpu("1")], [lab(LAB_A, "alice", ["1"])], "exclusive", doc, now=1000.0)
    assert rows[0]["utilisation"] == 40 and rows[0]["held_by"] == ["alice"]
    assert rows[0]["memory_mib"] == 15360  # from the sampler when the inventory lacks it


def test_compose_board_counts_labs_per_profile(tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps(samples(gpus=[sampled(A, 85, 9216)])))
    containers = [{"Id": LAB_A, "Labels": {"gpuhub.user": "alice", "gpuhub.gpus": A,
                                           "gpuhub.profile": "gpu1"}},
                  {"Id": LAB_B, "Labels": {"gpuhub.user": "bob", "gpuhub.profile": "cpu"}},
                  {"Id": "c" * 64, "Labels": {"gpuhub.user": "carol", "gpuhub.profile": "cpu"}}]
    board = telemetry.compose_board("gpuhub", "exclusive", INVENTORY, lambda: containers, path,
                                    now=1001.0)
    assert board.labs_per_profile == {"gpu1": 1, "cpu": 2}
    assert board.sampled and board.problem == ""
    assert board.rows[0]["held_by"] == ["alice"]


# --- the board and the metrics ----------------------------------------------------------

def test_board_keeps_the_last_rows_when_docker_fails():
    calls = []

    def fetch():
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionError("broker down")
        return telemetry.Board(rows=[{"gpu": "0"}], problem="", taken_at=1.0, sampled=True)

    board = telemetry.GpuBoard(lambda: (fetch, 3600.0))
    assert board.latest().rows == [{"gpu": "0"}]
    failed = board.refresh()
    assert failed.rows == [{"gpu": "0"}]
    assert failed.problem == "could not read the labs from Docker (broker down)"


def test_metrics_carry_utilisation_memory_holders_idle_and_labs():
    doc = samples(gpus=[sampled(A, 85, 9216), sampled(B, 0, 0, idle_since=700.0, index="1")])
    rows = report(INVENTORY, [lab(LAB_A, "alice", [A])], "exclusive", doc, now=1000.0)
    board = telemetry.GpuBoard(lambda: (lambda: telemetry.Board(
        rows=rows, labs_per_profile={"gpu1": 1}, problem="", taken_at=1000.0, sampled=True),
        3600.0))
    board.latest()
    registry = CollectorRegistry()
    registry.register(telemetry.BoardCollector(board))
    text = generate_latest(registry).decode()
    key = f'gpu="0",model="Tesla T4",uuid="{A}"'
    assert f"gpuhub_gpu_utilisation_percent{{{key}}} 85.0" in text
    assert f"gpuhub_gpu_memory_used_bytes{{{key}}} {floatToGoString(9216 * 1024 * 1024)}" in text
    assert f"gpuhub_gpu_memory_total_bytes{{{key}}} {floatToGoString(15360 * 1024 * 1024)}" in text
    assert ('gpuhub_gpu_holder{gpu="0",model="Tesla T4",profile="gpu1",user="alice",'
            f'uuid="{A}"}} 1.0') in text
    assert f'gpuhub_gpu_idle_seconds{{gpu="1",model="Tesla T4",uuid="{B}"}} 300.0' in text
    assert 'gpuhub_labs_running{profile="gpu1"} 1.0' in text
    assert "gpuhub_gpu_sampler_up 1.0" in text


def test_the_hubs_telemetry_is_made_by_install_not_at_import(monkeypatch):
    monkeypatch.setattr(telemetry, "_installed", None)
    with pytest.raises(RuntimeError, match="not installed"):
        telemetry.installed()
    registry = CollectorRegistry()
    installed = telemetry.install(lambda: (telemetry.Board, 3600.0), registry=registry)
    assert telemetry.installed() is installed
    installed.spawns_refused.labels(reason="gpus_busy").inc()
    text = generate_latest(registry).decode()
    assert 'gpuhub_spawns_refused_total{reason="gpus_busy"} 1.0' in text
    assert "# TYPE gpuhub_spawn_duration_seconds histogram" in text
    assert "gpuhub_gpu_sampler_up 0.0" in text  # the board's collector is registered too


def test_importing_the_hub_modules_fills_no_registry_and_starts_no_thread():
    # (JupyterHub registers its own metrics at import; gpuhub's come only from install.)
    code = ("import threading, prometheus_client as p;"
            " import gpuhub.hub.spawner, gpuhub.hub.gpupage, gpuhub.hub.hubmodes, gpuhub.hub.hubconfig;"
            " ours = [n for n in p.REGISTRY._names_to_collectors if n.startswith('gpuhub')];"
            " assert not ours, ours;"
            " assert threading.active_count() == 1, threading.enumerate()")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_the_board_and_the_metrics_show_the_line(tmp_path):
    line = tmp_path / "gpu-line.json"
    line.write_text(json.dumps([{"user": "q4", "gpus": 1, "since": 940.0},
                                {"user": "q5", "gpus": 2, "since": 990.0}]))
    board = telemetry.compose_board("gpuhub", "exclusive", INVENTORY, lambda: [],
                                    tmp_path / "none.json", now=1000.0, line_path=line)
    assert [w["user"] for w in board.waiting] == ["q4", "q5"]
    assert board.as_json()["waiting"][1] == {"user": "q5", "gpus": 2, "since": 990.0}
    gpus = telemetry.GpuBoard(lambda: (lambda: board, 3600.0))
    gpus.latest()
    registry = CollectorRegistry()
    registry.register(telemetry.BoardCollector(gpus))
    text = generate_latest(registry).decode()
    assert "gpuhub_gpu_queue_length 2.0" in text
    assert "gpuhub_gpu_queue_oldest_wait_seconds" in text


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "gpu-line.json"
    files.write_atomically(path, "old", mode=0o600)

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(OSError):
        files.write_atomically(path, "new")
    assert path.read_text() == "old" and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["gpu-line.json"]


# --- MIG: instances under their parent; what nvidia-smi cannot tell stays unknown ------------

PARENT = "GPU-5b0c7a1e-3f2d-4c8b-9a61-7e2f4d3c1b90"
SMALL, BIG = "MIG-3f60a142-8c5d-5e9f-a0b1-2c3d4e5f6a73", "MIG-1d4e8f20-6a3b-5c7d-8e9f-0a1b2c3d4e51"
A100 = "NVIDIA A100-SXM4-40GB"
MIG_INVENTORY = [Gpu("0:0", BIG, f"{A100} MIG 3g.20gb", 20480, PARENT, "3g.20gb"),
                 Gpu("0:1", SMALL, f"{A100} MIG 1g.5gb", 5120, PARENT, "1g.5gb"),
                 Gpu("1", B, A100, 40960)]


def test_the_sampler_reads_a_gpu_in_mig_mode_as_the_double_prints_it():
    # The double's --query-gpu line for GPU 0 of inventory-mig.json (nounits).
    line = f"0, {PARENT}, {A100}, [N/A], 3000, 40960\n"
    assert [(g["uuid"], g["utilisation"], g["memory_used_mib"])
            for g in sampler.parse_gpus(line)] == [(PARENT, None, 3000)]


def test_a_mig_instance_has_no_utilisation_and_its_holder_the_memory_of_its_processes():
    doc = samples(gpus=[{**sampled(PARENT, None, 3000), "utilisation": None},
                        sampled(B, 50, 100, index="1")],
                  processes=[{"gpu_uuid": PARENT, "pid": 7, "used_mib": 1200, "container": LAB_A},
                             {"gpu_uuid": PARENT, "pid": 8, "used_mib": 1800, "container": LAB_B}])
    labs = [lab(LAB_A, "alice", [SMALL], profile="small"), lab(LAB_B, "bob", [BIG])]
    rows = report(MIG_INVENTORY, labs, "exclusive", doc, now=1000.0)
    small = rows[1]
    assert (small["gpu"], small["parent"], small["parent_gpu"], small["mig_profile"]) == (
        "0:1", PARENT, "0", "1g.5gb")
    assert small["utilisation"] is None and small["idle_seconds"] is None  # never "idle"
    assert [(h["user"], h["memory_used_mib"]) for h in small["holders"]] == [("alice", 1200)]
    assert small["memory_used_mib"] == 1200 and rows[0]["memory_used_mib"] == 1800
    assert small["parent_memory_used_mib"] == 3000  # the whole GPU's, as nvidia-smi reads it
    assert rows[2]["utilisation"] == 50 and "parent" not in rows[2]


def test_without_processes_an_instances_memory_is_unknown():
    doc = samples(gpus=[sampled(PARENT, None, 3000)])
    row = report(MIG_INVENTORY, [lab(LAB_A, "alice", [SMALL])], "exclusive", doc, now=1000.0)[1]
    assert row["holders"][0]["memory_used_mib"] is None and row["memory_used_mib"] is None


def test_the_text_table_lists_instances_under_their_gpu_with_unknown_utilisation():
    doc = samples(gpus=[sampled(PARENT, None, 3000)])
    rows = report(MIG_INVENTORY, [lab(LAB_A, "alice", [SMALL], profile="small")], "exclusive",
                  doc, now=1000.0)
    lines = as_text(rows).splitlines()
    assert lines[1].split() == ["0", *A100.split(), "(MIG", "mode)", "-", "-", "unknown",
                                "3000", "/", "15360", "MiB", "-", "exclusive"]
    assert lines[2].split()[:4] == ["0:0", "MIG", "3g.20gb", "free"]
    assert lines[3].split()[:5] == ["0:1", "MIG", "1g.5gb", "alice", "(small)"]
    assert "unknown" in lines[3] and "? / 5120 MiB" in lines[3]
    assert lines[2].startswith("  0:0") and lines[4].startswith("1 ")


def test_metrics_name_each_mig_instance_with_its_parent_and_profile():
    rows = report(MIG_INVENTORY, [], "exclusive", None)
    board = telemetry.GpuBoard(lambda: (lambda: telemetry.Board(
        rows=rows, labs_per_profile={}, problem="", taken_at=1000.0, sampled=True), 3600.0))
    board.latest()
    registry = CollectorRegistry()
    registry.register(telemetry.BoardCollector(board))
    text = generate_latest(registry).decode()
    assert (f'gpuhub_gpu_mig_instance{{gpu="0:1",model="{A100} MIG 1g.5gb",parent="{PARENT}",'
            f'profile="1g.5gb",uuid="{SMALL}"}} 1.0') in text
    assert 'gpuhub_gpu_mig_instance{gpu="1"' not in text
    assert 'gpuhub_gpu_utilisation_percent{gpu="0:1"' not in text  # unknown, not 0
