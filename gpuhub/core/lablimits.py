"""How much memory and CPU one lab may use: the one memory-size parser, and what ``auto`` is.

LAB_MEM_LIMIT, LAB_CPU_LIMIT and a profile's ``mem_limit`` are read here, so a size that
passes in the settings passes in profiles.yaml too, and one that would fail at spawn
time fails at start-up instead.

``auto`` (the default of both settings):

- memory: the memory of the machine labs run on, less a reserve of 2 GiB or 10 %,
  whichever is more (at most half of it), for the system, Docker, the hub and its
  proxies. Memory cannot be shared back: without a limit, one lab that takes it all
  makes the kernel's OOM killer choose a victim anywhere on the host, another user's
  lab or the hub. With it, the lab that goes over its limit is the one that loses a
  process. All labs together are bounded too (LABS_MEM_LIMIT, the same figure by
  default): they run under one parent cgroup with that limit (the lab-memory service,
  gpuhub/labfirewall/labmemory.py).
- CPU: no quota. CPU time is shared back at once: when labs compete, the kernel gives
  each the same share. The hub, proxy and broker run under a parent cgroup of their own
  that lab-memory keeps at 16 times the default weight (``cgroup_parent`` in
  docker-compose.yml), so they get a core ahead of the labs and of Docker's own processes
  when many labs start; they use little CPU, so the weight takes nothing others need. A
  quota would leave idle cores unused and throttle multi-threaded work even on an idle
  host.

`invoke up` reports the machine's memory as Docker sees it (``GPUHUB_LAB_HOST_MEMORY``;
in swarm mode the smallest node's); without it the hub reads its own ``/proc/meminfo``,
which inside a container on Linux is the host's (not so when Docker itself runs in an
LXC container with LXCFS, which is why the host's word comes first).

Only the standard library: the Docker broker's image imports the settings and profiles.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

UNITS = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}
SIZE_EXAMPLE = "a size such as 512M or 16G (K, M, G, T are powers of 1024)"
# Docker refuses a container memory limit below 6 MiB.
DOCKER_MIN_MEMORY = 6 * UNITS["M"]
RESERVE_MIN = 2 * UNITS["G"]
RESERVE_SHARE = 0.10
HOST_MEMORY_ENV = "GPUHUB_LAB_HOST_MEMORY"  # bytes; set by `invoke up`
# A lab's log (what it writes to stdout and stderr, e.g. to /proc/1/fd/1) is kept in at most
# LOG_FILES files of LOG_MAX_SIZE each: a lab cannot fill Docker's disk through its log.
LOG_MAX_SIZE = "10m"
LOG_FILES = 3
LOG_DRIVER = "json-file"
LOG_OPTIONS = {"max-size": LOG_MAX_SIZE, "max-file": str(LOG_FILES)}
LOG_CONFIG = {"Type": LOG_DRIVER, "Config": LOG_OPTIONS}  # as Docker's API writes it
MEMINFO = Path("/proc/meminfo")

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([KMGT])", re.IGNORECASE)


def parse_memory(raw: object, others: str = "") -> str:
    """A memory size as Docker and DockerSpawner read it (``16G``); ValueError says the fix.

    The unit is required: DockerSpawner takes a bare number in a string for a broken
    size (and fails at spawn time), and ``mem_limit: 16`` meant as gigabytes would be
    16 bytes. ``others`` names the other values the caller accepts, for the message.
    """
    text = str(raw).strip()
    expected = f"{others} or {SIZE_EXAMPLE}" if others else SIZE_EXAMPLE
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(("needs a unit: " if text.isdigit() else "") + f"must be {expected}")
    if float(match[1]) * UNITS[match[2].upper()] < DOCKER_MIN_MEMORY:
        raise ValueError("must be at least 6M (the smallest memory limit Docker accepts)")
    return text.upper()


def memory_bytes(size: str) -> int:
    """Bytes of a size :func:`parse_memory` accepted, as DockerSpawner counts them."""
    return int(float(size[:-1]) * UNITS[size[-1].upper()])


def auto_memory(host_bytes: int) -> str:
    """LAB_MEM_LIMIT=auto on a machine with ``host_bytes`` of memory, in whole MiB."""
    reserve = min(max(RESERVE_MIN, int(host_bytes * RESERVE_SHARE)), host_bytes // 2)
    return f"{max(host_bytes - reserve, DOCKER_MIN_MEMORY) // UNITS['M']}M"


def auto_memory_note(host_bytes: int) -> str:
    """What `invoke up` says LAB_MEM_LIMIT=auto comes to."""
    return (f"labs may use up to {auto_memory(host_bytes)} of memory each (LAB_MEM_LIMIT=auto: "
            f"{host_bytes / UNITS['G']:.1f} GiB less a reserve for the system and the hub)")


def lab_memory(setting: str, host_bytes: int) -> str | None:
    """The memory limit labs get for LAB_MEM_LIMIT (auto, none or a size); None: no limit."""
    if setting == "none":
        return None
    if setting != "auto":
        return setting
    if host_bytes <= 0:
        raise ValueError("LAB_MEM_LIMIT=auto, but the memory of the machine labs run on is "
                         "unknown (no GPUHUB_LAB_HOST_MEMORY from `invoke up`, no "
                         "/proc/meminfo): start the stack with `invoke up`, or set "
                         "LAB_MEM_LIMIT to a size such as 16G")
    return auto_memory(host_bytes)


def labs_memory(setting: str, host_bytes: int) -> int | None:
    """Bytes all labs together may use for LABS_MEM_LIMIT (auto, none or a size); None: no
    such limit. auto: the host less the reserve LAB_MEM_LIMIT=auto leaves."""
    if setting == "none":
        return None
    if setting != "auto":
        return memory_bytes(setting)
    if host_bytes <= 0:
        raise ValueError("LABS_MEM_LIMIT=auto, but the Docker host's memory is unknown: set "
                         "LABS_MEM_LIMIT to a size such as 48G, or none")
    return memory_bytes(auto_memory(host_bytes))


def lab_cpus(setting: str | float) -> float | None:
    """The CPU limit labs get for LAB_CPU_LIMIT (auto, none or a number); None: no quota."""
    return None if setting in ("auto", "none") else float(setting)


def meminfo_total(text: str) -> int:
    """MemTotal of a ``/proc/meminfo`` text, in bytes (0 if it has none)."""
    found = re.search(r"^MemTotal:\s+(\d+)\s+kB$", text, re.MULTILINE)
    return int(found[1]) * 1024 if found else 0


def host_memory(env: Mapping[str, str], meminfo: Path = MEMINFO) -> int:
    """Bytes of memory of the labs' machine: as `invoke up` gave it, else this kernel's."""
    given = (env.get(HOST_MEMORY_ENV) or "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        return meminfo_total(Path(meminfo).read_text())
    except OSError:
        return 0


TMP_PATH = "/tmp"
# Bytes each lab may write to its writable layer (LAB_DISK_LIMIT, as `invoke up` found the
# engine can bound it); empty: no limit.
DISK_LIMIT_ENV = "GPUHUB_LAB_DISK_LIMIT"
AUTO_DISK_LIMIT = "20G"


def lab_disk_limit(env: Mapping[str, str]) -> int:
    """Bytes of each lab's writable layer, as `invoke up` passed them; 0: no limit."""
    given = (env.get(DISK_LIMIT_ENV) or "").strip()
    return int(given) if given.isdigit() else 0


def storage_opt(limit: int) -> dict[str, str]:
    """HostConfig.StorageOpt for a writable-layer limit of ``limit`` bytes (0: none)."""
    return {"size": str(limit)} if limit else {}


def lab_tmp(setting: str) -> dict[str, str]:
    """HostConfig.Tmpfs for LAB_TMP_SIZE (a size or none), as Docker records it: the lab's
    /tmp in memory, capped, counted toward the lab's memory limit. Empty: no tmpfs."""
    if setting == "none":
        return {}
    return {TMP_PATH: f"rw,nosuid,nodev,size={memory_bytes(setting)},mode=1777"}


def optional_bytes(setting: str) -> int:
    """Bytes of a size setting that may be none (WORK_QUOTA, LAB_TMP_SIZE); 0: none."""
    return 0 if setting == "none" else memory_bytes(setting)
