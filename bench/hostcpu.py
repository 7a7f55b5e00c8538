"""Where the CPU goes while labs start: the whole machine, and the Docker engine.

Containers' own CPU comes from Docker (probes.cpu_seconds). The engine's comes from /proc:
the dockerd the client talks to, its containerd, and the containerd-shim of each lab (with
the runc it ran and reaped: create, start). Shims of the hub and proxy are left out: their
health checks run inside those containers, whose CPU is counted already.

Readable only when the benchmark runs on the Docker host itself as root (CI, a server),
not against a remote DOCKER_HOST or Docker Desktop's VM: there ``EngineCpu.available`` is
False and the report says the engine's CPU was not measured.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
DOCKERD_PIDFILES = (Path("/var/run/docker.pid"), Path("/run/docker.pid"))
CONTAINERD_PIDFILES = (Path("/var/run/docker/containerd/containerd.pid"),
                       Path("/run/containerd/containerd.pid"))
HZ = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU-seconds all cores of this machine have spent busy since boot (/proc/stat)."""
    fields = (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / HZ


def process_cpu(pid: int) -> float | None:
    """CPU-seconds of a process and of the children it has reaped; None once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / HZ


def _pid_from(files: tuple[Path, ...]) -> int | None:
    for path in files:
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        if process_cpu(pid) is not None:
            return pid
    return None


def _only_process_named(name: str) -> int | None:
    """The pid of the one process with this name; None if there are none or several."""
    found = []
    for entry in PROC.iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
        except OSError:
            continue
    return found[0] if len(found) == 1 else None


class EngineCpu:
    """CPU-seconds of dockerd, containerd and the shims of given containers."""

    def __init__(self):
        self.dockerd = _pid_from(DOCKERD_PIDFILES)
        # Docker 20.10 runs its own containerd (pid file under /var/run/docker); newer
        # packages use the system's, which may write no pid file.
        self.containerd = _pid_from(CONTAINERD_PIDFILES) or _only_process_named("containerd")

    @property
    def available(self) -> bool:
        return self.dockerd is not None and self.containerd is not None

    def daemons(self) -> float | None:
        """dockerd + containerd, cumulative."""
        if not self.available:
            return None
        values = [process_cpu(self.dockerd), process_cpu(self.containerd)]
        return None if None in values else sum(values)

    def shims(self, container_ids: list[str]) -> float:
        """The shims of these containers, cumulative (each shim lives as long as its container)."""
        wanted = set(container_ids)
        total = 0.0
        for entry in PROC.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if not (entry / "comm").read_text().startswith("containerd-shim"):
                    continue
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-id" in args and args.index(b"-id") + 1 < len(args):
                if args[args.index(b"-id") + 1].decode() in wanted:
                    total += process_cpu(int(entry.name)) or 0.0
        return total
