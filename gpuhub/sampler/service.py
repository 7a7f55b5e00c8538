"""The gpu-sampler service: reads what every GPU is doing, at a fixed interval.

It runs as its own compose service where the driver is (the hub has no GPU), with GPU
access limited to the NVIDIA driver's ``utility`` capability: enough for ``nvidia-smi``,
nothing for CUDA. Each reading (utilisation, memory used and total, the compute
processes and the container each belongs to) is written to one JSON file on the
gpu-telemetry volume, which the hub mounts read-only (:mod:`gpuhub.hub.telemetry` reads it).

Why ``nvidia-smi`` and not NVIDIA's ``nvidia-ml-py``: the NVIDIA container toolkit puts
``nvidia-smi`` (and the NVML library behind it) into any container that asks for the
``utility`` capability, so the service needs no package beyond the hub image; its CSV
queries are a documented, stable interface that NVIDIA keeps across drivers; and one
binary is also what the test double fakes. The cost is two short processes per
interval, measured in docs/explanation/telemetry.md (Cost).

Processes are attributed to labs by their control group: with the host's PID namespace
(``pid: host``) the PIDs ``nvidia-smi`` reports are the host's, and
``/proc/<pid>/cgroup`` names the Docker container each runs in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from gpuhub.core import names
from gpuhub.core.gpus import RESET_REQUIRED, smi_failure, split_smi_line
from gpuhub.core.samples import FORMAT_VERSION, write_samples
from gpuhub.core.settings import SettingsError, validate

QUERY_GPUS = ["nvidia-smi",
              "--query-gpu=index,uuid,name,utilization.gpu,memory.used,memory.total",
              "--format=csv,noheader,nounits"]
QUERY_PROCESSES = ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,used_memory",
                   "--format=csv,noheader,nounits"]
# Readings kept per GPU for the admin page's history: 10 minutes at the default interval.
HISTORY_LENGTH = 120
# A Docker container's ID in a control group path: cgroupfs (/docker/<id>, or a lab's
# /<labs' parent>/<id>, LABS_MEM_LIMIT) or the systemd driver (.../docker-<id>.scope).
_CONTAINER_IN_CGROUP = re.compile(r"(?:^|/)(?:docker-)?([0-9a-f]{64})(?:\.scope)?(?:/|$)")


def _number(text: str) -> int | None:
    """A value of nvidia-smi's CSV: a whole number, or None for "[N/A]", "[Not Supported]"."""
    try:
        return int(float(text.strip()))
    except ValueError:
        return None


def parse_gpus(csv_text: str) -> list[dict]:
    """Parse QUERY_GPUS's output; a line it cannot read is a ValueError naming it."""
    gpus = []
    for line in csv_text.splitlines():
        if not line.strip():
            continue
        index, uuid, name, (utilisation, used_text, total_text) = split_smi_line(line, trailing=3)
        total, used = _number(total_text), _number(used_text)
        gpus.append({
            "index": index,
            "uuid": uuid,
            "name": name,
            "utilisation": _number(utilisation),
            "memory_used_mib": min(used, total) if used is not None and total else used,
            "memory_total_mib": total,
        })
    return gpus


def parse_processes(csv_text: str) -> list[dict]:
    """Parse QUERY_PROCESSES's output: one dict per compute process on a GPU."""
    processes = []
    for line in csv_text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or _number(parts[1]) is None:
            raise ValueError(f"unexpected nvidia-smi line {line!r}")
        processes.append({"gpu_uuid": parts[0], "pid": _number(parts[1]),
                          "used_mib": _number(parts[2])})
    return processes


def container_of(pid: int, proc: Path = Path("/proc")) -> str:
    """The ID of the Docker container process ``pid`` runs in; "" if none (or unknown)."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        # "hierarchy-ID:controllers:path"; the path is the last field and may hold ":".
        path = line.split(":", 2)[-1]
        found = _CONTAINER_IN_CGROUP.search(path)
        if found:
            return found.group(1)
    return ""


@dataclass
class _GpuTrack:
    history: deque = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))
    idle_since: float | None = None


class Sampler:
    """Turns nvidia-smi's readings into snapshots, keeping history and idle time per GPU.

    A GPU is idle while its utilisation is below ``idle_below`` percent; ``idle_since``
    is when the current idle stretch began. A GPU whose utilisation the driver does not
    report is never called idle (it cannot be measured, so it cannot be reclaimed).
    """

    def __init__(self, idle_below: int, interval: float):
        self.idle_below = idle_below
        self.interval = interval
        self._tracks: dict[str, _GpuTrack] = {}

    def resume(self, previous: dict | None) -> None:
        """Carry history and idle time over from the last snapshot (a sampler restart)."""
        for gpu in (previous or {}).get("gpus", []):
            try:
                track = _GpuTrack(idle_since=gpu.get("idle_since"))
                track.history.extend(tuple(point) for point in gpu.get("history", []))
            except (TypeError, ValueError):
                continue
            self._tracks[str(gpu.get("uuid"))] = track

    def snapshot(self, gpus: list[dict], processes: list[dict], now: float,
                 error: str = "", proc: Path = Path("/proc")) -> dict:
        """One reading as the JSON document the hub reads."""
        for gpu in gpus:
            track = self._tracks.setdefault(gpu["uuid"], _GpuTrack())
            util = gpu["utilisation"]
            if util is None or util >= self.idle_below:
                track.idle_since = None
            elif track.idle_since is None:
                track.idle_since = now
            track.history.append((round(now, 1), util, gpu["memory_used_mib"]))
            gpu["idle_since"] = track.idle_since
            gpu["history"] = [list(point) for point in track.history]
        seen = {g["uuid"] for g in gpus}
        for uuid in list(self._tracks):
            if uuid not in seen:
                del self._tracks[uuid]
        for process in processes:
            process["container"] = container_of(process["pid"], proc)
        return {"version": FORMAT_VERSION, "taken_at": now, "interval": self.interval,
                "idle_below": self.idle_below, "error": error, "gpus": gpus,
                "processes": processes}


# After a SIGKILL of a timed-out nvidia-smi, how long to wait for it to go. One stuck in the
# driver (uninterruptible sleep, after an Xid) never goes: it is left behind, not waited on.
KILL_GRACE = 1.0
# "Failed to initialize NVML" this many reads in a row: the sampler exits so that Docker
# restarts it (restart: unless-stopped), which gives a container back the device access a
# `systemctl daemon-reload` took away (NVIDIA/nvidia-container-toolkit#48).
NVML_LOST_READS = 3
NVML_LOST = "Failed to initialize NVML"


class Smi:
    """Runs nvidia-smi queries with a hard time limit each, and never twice at once while
    one it gave up on is still stuck."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.stuck: subprocess.Popen | None = None

    def run(self, args: list[str]) -> tuple[int, str, str]:
        """(exit code, stdout, stderr); raises TimeoutExpired or OSError (no nvidia-smi)."""
        if self.stuck is not None:
            if self.stuck.poll() is None:
                raise subprocess.TimeoutExpired(args, self.timeout)
            self.stuck = None
        # Its own process group: a timeout kills whatever it started too, which would
        # otherwise hold the output pipes open.
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        try:
            out, err = process.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, 9)
            except ProcessLookupError:
                pass
            try:
                process.communicate(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                self.stuck = process
            raise
        return process.returncode, out, err


def read_gpus(smi: Smi) -> tuple[list[dict], list[dict], str]:
    """Run both nvidia-smi queries: (gpus, processes, error). Never raises.

    Each GPU line is read on its own: one GPU that is lost or in error (its line an error
    message, or nvidia-smi exiting non-zero with the other lines valid, as rc 14 does) costs
    only its own reading, and ``error`` says what was wrong. A GPU that reads
    RESET_REQUIRED is listed with a ``fault`` (the hub takes it out of service).
    """
    try:
        code, out, err = smi.run(QUERY_GPUS)
        gpus, unreadable = [], []
        for line in out.splitlines():
            if not line.strip():
                continue
            try:
                read = parse_gpus(line)
            except ValueError:
                unreadable.append(line.strip())
                continue
            if RESET_REQUIRED in line:  # listed, but unusable until reset: a fault
                for g in read:
                    g["fault"] = (f"GPU {g['index']} needs a reset (it reads {RESET_REQUIRED}"
                                  "; an Xid: see the host's kernel log)")
                    unreadable.append(g["fault"])
            gpus.extend(read)
        if not gpus:
            failed = code != 0 or unreadable
            return [], [], f"nvidia-smi failed: {smi_failure(out, err, code)}" if failed else ""
        problem = ""
        if code != 0 or unreadable:
            why = "; ".join(unreadable + err.strip().splitlines()[:1])[:300]
            problem = (f"nvidia-smi exited {code}" if code else "nvidia-smi") + \
                (f": {why}" if why else "") + f"; {len(gpus)} GPU(s) read"
        # Processes are extra: GPUs are still reported when the driver lists none, or
        # prints a line that is no process ("No running processes found").
        _, apps, _ = smi.run(QUERY_PROCESSES)
        processes = []
        for line in apps.splitlines():
            try:
                processes.extend(parse_processes(line))
            except ValueError:
                continue
        return gpus, processes, problem
    except FileNotFoundError:
        return [], [], ("nvidia-smi is missing: the sampler has no GPU access (no NVIDIA "
                        "container toolkit, or no GPUs in the inventory)")
    except subprocess.TimeoutExpired:
        stuck = " and is still stuck (a GPU fault: see the host's kernel log for Xid)" \
            if smi.stuck is not None else ""
        return [], [], f"nvidia-smi did not answer within {smi.timeout:g} s{stuck}"


def nvml_lost(errors: list[str]) -> bool:
    """Whether the last reads all failed because NVML is gone from this container."""
    return len(errors) >= NVML_LOST_READS and all(
        NVML_LOST in e for e in errors[-NVML_LOST_READS:])


def main() -> None:
    try:
        settings = validate(os.environ)
    except SettingsError as err:
        sys.exit(f"error: {err}")
    path = Path(os.environ.get("GPUHUB_GPU_SAMPLES_FILE", names.GPU_SAMPLES_FILE))
    interval = float(settings.gpu_sample_interval)
    sampler = Sampler(settings.gpu_idle_utilisation, interval)
    try:
        sampler.resume(json.loads(path.read_text()))
    except (OSError, ValueError):
        pass
    print(f"gpu-sampler: every {interval:g} s into {path}", flush=True)
    said = None
    next_tick = time.monotonic()
    smi = Smi(timeout=max(2.0, min(10.0, 2 * interval)))
    errors: list[str] = []
    while True:
        gpus, processes, error = read_gpus(smi)
        if error != said:  # each change of state once in the log, not every interval
            print(f"gpu-sampler: {error or f'reading {len(gpus)} GPUs'}", flush=True)
            said = error
        write_samples(path, sampler.snapshot(gpus, processes, time.time(), error))
        errors = (errors + [error])[-NVML_LOST_READS:]
        if nvml_lost(errors):
            sys.exit("gpu-sampler: NVML is gone from this container (after a `systemctl "
                     "daemon-reload` on the host, the NVIDIA container toolkit's known "
                     "issue); exiting so that Docker restarts it with the GPUs")
        next_tick += interval
        time.sleep(max(0.0, next_tick - time.monotonic()))
        if time.monotonic() - next_tick > interval:  # fell behind (host suspended): skip
            next_tick = time.monotonic()


if __name__ == "__main__":
    main()
