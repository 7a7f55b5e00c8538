"""Who gets which GPU: the allocation policies, as a pure class with no Docker in it.

The hub keeps no allocation state of its own that could be lost: the spawner passes in
what Docker says is held (labels on running lab containers) plus the grants of spawns
still in flight, and the allocator decides from that alone. So a hub restart or crash
rebuilds the picture from Docker, and a lab that dies frees its GPUs.

Policies:

``exclusive``
    each lab gets the GPUs its profile asks for, dedicated until the lab stops.
``shared``
    every lab that asks for GPUs sees every GPU.
``round-robin``
    each lab gets its GPUs in rotation, least-loaded first; sharing allowed.

A GPU out of service (:mod:`gpuhub.core.outofservice`) is handed to nobody; a start that
could have had it waits as for a busy GPU.

Pins (``alice=2``) reserve devices: a pinned GPU is handed only to the users pinned to
it, and those users get only their pinned GPUs. Limits cap the GPUs one lab may hold,
per user or per group (``@group``), with ``*`` as the default.

MIG instances are devices like whole GPUs (by UUID, under the same policies, pins, limits
and line); ``slices`` says which devices are instances and of what profile. A start that
asks for a slice (a profile's ``gpu_slice``, e.g. ``1g.5gb``) is given instances of that
profile only, and one that does not, whole GPUs only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

POLICIES = ("exclusive", "shared", "round-robin")
# The default, and the one policy under which a GPU belongs to one lab at a time.
EXCLUSIVE = POLICIES[0]


def one_lab_per_gpu(policy: str) -> bool:
    """Whether ``policy`` gives each GPU to one lab at a time (the others share GPUs)."""
    return policy == EXCLUSIVE


class NoGpuAvailable(Exception):
    """The request cannot be met now; ``str()`` is for the user, ``detail`` for admins,
    ``reason`` for the metrics (gpu_limit, no_gpus or gpus_busy)."""

    def __init__(self, message: str, detail: str = "", reason: str = "gpu_limit"):
        super().__init__(message)
        self.detail = detail
        self.reason = reason


@dataclass
class GpuAllocator:
    devices: list[str]
    policy: str = "exclusive"
    limits: Mapping[str, int] = field(default_factory=dict)
    pins: Mapping[str, list[str]] = field(default_factory=dict)
    slices: Mapping[str, str] = field(default_factory=dict)  # MIG instance: its profile
    _cursor: int = 0

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"unknown GPU policy {self.policy!r}; use one of {', '.join(POLICIES)}")
        unknown = {d for ds in self.pins.values() for d in ds} - set(self.devices)
        if unknown:
            raise ValueError(f"GPU_PINS names GPUs that are not in the inventory: {sorted(unknown)}")

    def limit_for(self, user: str, groups: Iterable[str] = ()) -> int | None:
        """The most GPUs one lab of ``user`` may hold (None: no limit)."""
        if user in self.limits:
            return self.limits[user]
        group_limits = [self.limits[f"@{g}"] for g in groups if f"@{g}" in self.limits]
        if group_limits:
            return max(group_limits)
        return self.limits.get("*")

    def check_limit(self, user: str, count: int, groups: Iterable[str] = ()) -> None:
        """Raise NoGpuAvailable if one lab of ``user`` may not hold ``count`` GPUs."""
        limit = self.limit_for(user, groups)
        if limit is not None and count > limit:
            raise NoGpuAvailable(
                f"your limit is {limit} GPU(s) per lab and this profile asks for {count}; "
                "choose a profile with fewer GPUs")

    def allocate(self, user: str, count: int, held: Mapping[str, list[str]],
                 groups: Iterable[str] = (), out_of_service: Collection[str] = (),
                 gpu_slice: str = "") -> list[str]:
        """Choose ``count`` device IDs for ``user``'s lab, given what others hold now.

        ``held`` maps each *other* running or starting lab's user to its device IDs;
        ``out_of_service`` are never chosen; ``gpu_slice``: MIG instances of that profile
        (empty: whole GPUs).
        Raises NoGpuAvailable when the request cannot be met; never double-books a
        GPU under the exclusive policy.
        """
        if count < 0:
            raise ValueError("count must be 0 or more")
        if count == 0:
            return []
        self.check_limit(user, count, groups)
        if not self.devices:
            raise NoGpuAvailable("this server has no GPUs; choose the CPU profile",
                                 reason="no_gpus")
        if user in self.pins:
            candidates = list(self.pins[user])
        else:
            reserved = {d for u, ds in self.pins.items() for d in ds}
            candidates = [d for d in self.devices if d not in reserved]
        candidates = [d for d in candidates if self.slices.get(d, "") == gpu_slice]
        what = f"{gpu_slice} MIG instance" if gpu_slice else "GPU"
        if count > len(candidates):
            raise NoGpuAvailable(
                f"you may use at most {len(candidates)} {what}(s) on this server and this "
                f"profile asks for {count}; choose a profile with fewer GPUs"
                + self._slices_note(gpu_slice))

        broken = [d for d in candidates if d in out_of_service]
        if len(candidates) - len(broken) < count:
            raise NoGpuAvailable(
                f"GPU {', '.join(broken)} {'is' if len(broken) == 1 else 'are'} out of "
                f"service and this profile needs {count} of the {len(candidates)} {what}s you "
                "may use; choose the CPU profile or try later", reason="gpus_busy")
        candidates = [d for d in candidates if d not in broken]
        others = {u: ds for u, ds in held.items() if u != user}
        if self.policy == "shared":
            return list(candidates)
        if self.policy == "round-robin":
            return self._least_loaded(candidates, others, count)
        busy = {d for ds in others.values() for d in ds}
        free = [d for d in candidates if d not in busy]
        if len(free) < count:
            holders = ", ".join(f"{d}: {u}" for u, ds in sorted(others.items()) for d in ds
                                if d in candidates)
            # "all N ... in use (1 free)" contradicted itself when some GPUs were free.
            in_use = "all" if not free else f"{len(candidates) - len(free)} of the"
            raise NoGpuAvailable(
                f"{in_use} {len(candidates)} {what}s you may use are in use "
                f"({len(free)} free, this profile needs {count}); "
                "choose the CPU profile or try later",
                detail=f"held by {holders}" if holders else "", reason="gpus_busy")
        return free[:count]

    def _slices_note(self, gpu_slice: str) -> str:
        """What this server has instead, when a start asks for a kind it lacks."""
        kinds = sorted(set(self.slices.values()))
        if not gpu_slice and kinds:
            return (f" (this server's GPUs are partly or wholly MIG instances: "
                    f"{', '.join(kinds)}; a profile asks for one with gpu_slice)")
        if gpu_slice and gpu_slice not in kinds:
            return f" (this server's MIG instances are {', '.join(kinds) or 'none'})"
        return ""

    def _least_loaded(self, candidates: list[str], others: Mapping[str, list[str]],
                      count: int) -> list[str]:
        load = {d: 0 for d in candidates}
        for ds in others.values():
            for d in ds:
                if d in load:
                    load[d] += 1
        n = len(candidates)
        start = self._cursor % n
        rotated = candidates[start:] + candidates[:start]
        chosen = sorted(rotated, key=lambda d: load[d])[:count]  # stable: rotation breaks ties
        self._cursor = (candidates.index(chosen[-1]) + 1) % n
        return sorted(chosen, key=candidates.index)


def parse_assignments(raw: str, what: str) -> dict[str, str]:
    """Parse ``name=value;name=value`` (used by GPU_LIMITS and GPU_PINS)."""
    result: dict[str, str] = {}
    for part in (p.strip() for p in raw.split(";")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"{part!r} is not NAME=VALUE; {what}")
        if key in result:
            raise ValueError(f"{key!r} appears twice; {what}")
        result[key] = value
    return result
