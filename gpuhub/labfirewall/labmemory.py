"""The labs' memory, all together: one parent cgroup for every lab, with its own limit.

Runs as the ``lab-memory`` compose service (the lab-firewall image: only python3-minimal;
no network, only DAC_OVERRIDE (cgroup v1's controller folders are read-only, even for
root), the host's cgroup tree mounted at ``/host/cgroup``). Each lab
has its own limit (LAB_MEM_LIMIT); this one bounds them together (LABS_MEM_LIMIT), so the
hub, the proxy, the broker and the host keep the rest: when labs together reach it, the
kernel's OOM killer picks a process inside the labs' cgroup, never outside.

Every lab is created under the parent ``GPUHUB_LABS_CGROUP_PARENT`` (the spawner asks for
it, the Docker broker sets it). The parent is made here, before any lab (a parent Docker
made on its own would have no limit), and its limit written and read back every few
seconds: after a reboot, or if something resets it, it is put back. Only while it holds
is the service healthy, and the hub starts labs only while it is (fail closed). The limit
stays when the service stops while labs run; with none left, the parent is removed.

Where the parent is, by Docker's cgroup driver and the kernel's cgroup version:

- cgroupfs, v1: ``memory/<parent>`` (``memory.limit_in_bytes``);
- cgroupfs, v2: ``<parent>`` (``memory.max``);
- systemd (v2): the slice's path, ``gpuhub.slice/gpuhub-x.slice/gpuhub-x-labs.slice``
  (``memory.max``; systemd may reset it on a reload, and it is put back within seconds).

This file runs alone in that image, so it imports only the standard library.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import NamedTuple

CGROUP_ROOT = "/host/cgroup"  # the host's /sys/fs/cgroup (compose mounts it)
STATUS_FILE = "/run/lab-memory.ok"  # touched after each good check (the health check)
CHECK_INTERVAL = 5


class Parent(NamedTuple):
    """The labs' parent cgroup and its limit. (A NamedTuple: no dataclasses here.)"""

    name: str  # as Docker's CgroupParent names it
    limit: int  # bytes
    driver: str  # cgroupfs or systemd
    version: str  # 1 or 2

    def path(self, root: str = CGROUP_ROOT) -> str:
        return cgroup_path(self.name, self.driver, self.version, "memory", root)

    @property
    def limit_file(self) -> str:
        return "memory.limit_in_bytes" if self.version == "1" else "memory.max"


class Services(NamedTuple):
    """The parent cgroup of the hub's own services (hub, proxy, docker-proxy) and the CPU
    weight it is kept at: above Docker's own processes and the labs, so that the hub answers
    while many labs start (docs/explanation/benchmark.md). They spend little CPU, so the
    weight only makes them wait less for a core; it takes nothing anyone else needs."""

    name: str  # as Docker's CgroupParent names it
    driver: str
    version: str

    def path(self, root: str = CGROUP_ROOT) -> str:
        return cgroup_path(self.name, self.driver, self.version, "cpu", root)

    @property
    def weight_file(self) -> str:
        return "cpu.shares" if self.version == "1" else "cpu.weight"

    @property
    def weight(self) -> int:
        """16 times the default: cgroup v1's cpu.shares (1024), v2's cpu.weight (100)."""
        return 16 * (1024 if self.version == "1" else 100)


def cgroup_path(name: str, driver: str, version: str, controller: str,
                root: str = CGROUP_ROOT) -> str:
    """Where the cgroup Docker's CgroupParent ``name`` names is, for ``controller`` on v1."""
    if driver == "systemd":
        # Docker (via systemd) nests a-b-c.slice in a.slice/a-b.slice.
        stem = name[: -len(".slice")]
        parts = stem.split("-")
        slices = ["-".join(parts[: i + 1]) + ".slice" for i in range(len(parts))]
        return os.path.join(root, *slices)
    base = os.path.join(root, controller) if version == "1" else root
    return os.path.join(base, name.strip("/"))


def _check_name(variable: str, name: str, driver: str) -> None:
    expected = name.endswith(".slice") if driver == "systemd" else name.startswith("/")
    if not expected or ".." in name or "//" in name or not name.strip("/").replace(
            "-", "").replace("_", "").replace("/", "").replace(".", "").isalnum():
        raise ValueError(f"{variable}={name!r} is not a cgroup parent gpuhub makes; start "
                         "the stack with `invoke up`")


def services_from_env(env: dict[str, str], parent: Parent) -> Services | None:
    """The services' parent compose describes (None: none, they run where Docker puts them)."""
    name = env.get("GPUHUB_SERVICES_CGROUP_PARENT", "")
    if not name:
        return None
    _check_name("GPUHUB_SERVICES_CGROUP_PARENT", name, parent.driver)
    if name == parent.name:
        raise ValueError("GPUHUB_SERVICES_CGROUP_PARENT is the labs' parent; start the stack "
                         "with `invoke up`")
    return Services(name, parent.driver, parent.version)


def parent_from_env(env: dict[str, str]) -> Parent:
    """The parent compose describes; ValueError naming the variable otherwise."""
    name = env.get("GPUHUB_LABS_CGROUP_PARENT", "")
    driver = env.get("GPUHUB_CGROUP_DRIVER", "")
    version = env.get("GPUHUB_CGROUP_VERSION", "")
    limit = env.get("GPUHUB_LABS_MEMORY", "")
    if driver not in ("cgroupfs", "systemd") or version not in ("1", "2"):
        raise ValueError(f"GPUHUB_CGROUP_DRIVER={driver!r} and GPUHUB_CGROUP_VERSION="
                         f"{version!r} are not a cgroup setup gpuhub knows; start the stack "
                         "with `invoke up`, which reads them from Docker")
    if driver == "systemd" and version == "1":
        raise ValueError("Docker's systemd cgroup driver on cgroup v1 is not supported: use "
                         "cgroup v2, or the cgroupfs driver, or LABS_MEM_LIMIT=none")
    _check_name("GPUHUB_LABS_CGROUP_PARENT", name, driver)
    if not limit.isdigit() or int(limit) <= 0:
        raise ValueError(f"GPUHUB_LABS_MEMORY={limit!r} is not a number of bytes; start the "
                         "stack with `invoke up`")
    return Parent(name, int(limit), driver, version)


def read_limit(parent: Parent, root: str = CGROUP_ROOT) -> int | None:
    """The parent's limit as the kernel holds it (None: no parent, or no limit)."""
    try:
        with open(os.path.join(parent.path(root), parent.limit_file)) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def page_rounded(limit: int) -> int:
    """The kernel keeps a limit in whole pages."""
    page = os.sysconf("SC_PAGE_SIZE")
    return limit // page * page


def apply(parent: Parent, root: str = CGROUP_ROOT) -> None:
    """Make the parent (if missing) and write its limit; OSError when the kernel refuses."""
    os.makedirs(parent.path(root), exist_ok=True)
    with open(os.path.join(parent.path(root), parent.limit_file), "w") as f:
        f.write(str(parent.limit))


def in_place(parent: Parent, root: str = CGROUP_ROOT) -> bool:
    return read_limit(parent, root) == page_rounded(parent.limit)


def keep_weight(services: Services, root: str = CGROUP_ROOT) -> str:
    """Make the services' parent (if missing) and put its weight back if it changed; what
    went wrong, or ''."""
    path = os.path.join(services.path(root), services.weight_file)
    try:
        os.makedirs(services.path(root), exist_ok=True)
        try:
            with open(path) as f:
                if f.read().strip() == str(services.weight):
                    return ""
        except FileNotFoundError:
            pass  # the kernel refuses the write below too, and says why
        with open(path, "w") as f:
            f.write(str(services.weight))
        with open(path) as f:
            held = f.read().strip()
    except OSError as err:
        return f"cannot keep {path} at {services.weight}: {err}"
    return "" if held == str(services.weight) else f"{path} holds {held}, not {services.weight}"


def log(message: str) -> None:
    print(f"lab-memory: {message}", flush=True)


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop()


def mark_healthy(status: str, healthy: bool) -> None:
    if healthy:
        with open(status, "w") as f:
            f.write(f"{time.time():.0f}\n")
    elif os.path.exists(status):
        os.remove(status)


def run_forever(parent: Parent, root: str = CGROUP_ROOT, interval: float = CHECK_INTERVAL,
                status: str = STATUS_FILE, services: Services | None = None) -> None:
    """Keep the parent's limit in place until SIGTERM; healthy only while it holds. Keep
    the services' weight too: without it the hub answers more slowly in a storm of starts,
    but nothing is unsafe, so it does not make the service unhealthy."""
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    told = told_weight = None
    try:
        while True:
            if services is not None:
                weight_problem = keep_weight(services, root)
                if weight_problem != told_weight:
                    log(f"warning: {weight_problem}; the hub may answer slowly while many "
                        "labs start" if weight_problem else
                        f"the hub's services run with CPU weight {services.weight} "
                        f"({services.name})")
                    told_weight = weight_problem
            problem = ""
            if not in_place(parent, root):
                try:
                    apply(parent, root)
                except OSError as err:
                    problem = f"cannot write {parent.limit_file} of {parent.path(root)}: {err}"
                if not problem and not in_place(parent, root):
                    problem = (f"{parent.path(root)} holds {read_limit(parent, root)}, not "
                               f"{page_rounded(parent.limit)}")
            if problem != told:
                log(f"error: {problem}; no lab starts until then" if problem else
                    f"labs together may use {parent.limit // 2**20} MiB ({parent.name}, "
                    f"{parent.driver}, cgroup v{parent.version})")
                told = problem
            mark_healthy(status, not problem)
            time.sleep(interval)
    except _Stop:
        if services is not None:
            try:  # only once the services are gone too (`invoke down`)
                os.rmdir(services.path(root))
            except OSError:
                pass
        try:  # the kernel refuses while a lab is in it: then the limit stays in place
            os.rmdir(parent.path(root))
            log("stopping; no lab is left, so the labs' parent cgroup is removed")
        except OSError:
            log("stopping; the labs' limit stays in place")
    finally:
        mark_healthy(status, False)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    """``run`` (the service) or ``check`` (whether the limit holds, for admins)."""
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv else "run"
    try:
        parent = parent_from_env(dict(os.environ))
        services = services_from_env(dict(os.environ), parent)
    except ValueError as err:
        log(f"error: {err}")
        return 2
    if command == "check":
        held = read_limit(parent)
        log(f"{parent.path()}: {held} (wanted {page_rounded(parent.limit)})")
        return 0 if in_place(parent) else 1
    if command != "run":
        log(f"error: unknown command {command!r}; use run or check")
        return 2
    run_forever(parent, services=services)
    return 0


if __name__ == "__main__":
    sys.exit(main())
