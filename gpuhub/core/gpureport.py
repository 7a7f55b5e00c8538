"""Who holds which GPU, and what each GPU is doing: one table for `invoke gpus`, the
hub's admin page and the metrics.

Built from the inventory the hub was started with, the labels on running lab
containers (Docker is the record of allocations) and the gpu-sampler's latest reading
(:mod:`gpuhub.hub.telemetry`). Matching is by GPU UUID; a GPU the inventory names by index
only is matched by index (the sampler sees the host's numbering).

MIG instances: nvidia-smi (NVML) reads no utilisation on a GPU in MIG mode and no memory
per instance (DCGM's profiling metrics are the real source, which gpuhub does not read).
An instance's row therefore has utilisation None ("unknown"), never a number made up;
its holders' memory is what their own processes use on the parent GPU (``--query-compute-
apps`` lists a process with the parent's UUID), and the parent's whole memory use is in
``parent_memory_used_mib``. Instance rows carry ``parent`` (UUID), ``parent_gpu`` (index)
and ``mig_profile``; a text table lists them under a line for their parent.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass

from gpuhub.core.allocator import one_lab_per_gpu
from gpuhub.core.gpus import Gpu
from gpuhub.core.labels import PROFILE as LABEL_PROFILE
from gpuhub.core.labels import SINCE as LABEL_SINCE
from gpuhub.core.labels import USER as LABEL_USER
from gpuhub.core.labels import gpus_of


@dataclass(frozen=True)
class Lab:
    """A running lab as Docker records it: container ID and gpuhub's labels."""

    id: str
    user: str
    profile: str
    gpus: tuple[str, ...]
    since: str

    @classmethod
    def from_labels(cls, container_id: str, labels: dict) -> Lab:
        return cls(id=container_id, user=labels.get(LABEL_USER, "?"),
                   profile=labels.get(LABEL_PROFILE, ""),
                   gpus=tuple(gpus_of(labels)),
                   since=labels.get(LABEL_SINCE, ""))


def labs_from_docker(containers: list[dict]) -> list[Lab]:
    """Docker's container list (``Id``, ``Labels``) as labs."""
    return [Lab.from_labels(c.get("Id", ""), c.get("Labels") or {}) for c in containers]


def _sample_for(gpu: Gpu, samples: dict | None) -> dict | None:
    for sampled in (samples or {}).get("gpus", []):
        if (gpu.uuid and sampled.get("uuid") == gpu.uuid) or (
                not gpu.uuid and sampled.get("index") == gpu.index):
            return sampled
    return None


def report(inventory: list[Gpu], labs: list[Lab], policy: str, samples: dict | None = None,
           now: float | None = None, out_of_service: dict[str, dict] | None = None,
           ) -> list[dict]:
    """One row per GPU: identity, policy, holders (user, profile, since, memory) and the
    latest utilisation, memory, history and idle time (None where nothing was sampled).

    A holder's memory: under ``exclusive`` the GPU's whole memory use (one lab per GPU);
    under sharing, the memory of the compute processes running in that lab's container,
    when the driver reports processes. What no lab's process accounts for is
    ``unattributed_mib`` (processes outside labs, or a driver that lists none).
    ``out_of_service`` (device ID: reason and since) marks GPUs taken out after a fault;
    None: not known (the row then has no ``out_of_service`` key).
    """
    now = datetime.datetime.now(datetime.UTC).timestamp() if now is None else now
    processes = (samples or {}).get("processes", [])
    rows = []
    for g in inventory:
        holding = [lab for lab in labs if g.device_id in lab.gpus
                   or (g.uuid and g.index in lab.gpus)]
        parent = _sample_for(Gpu(index=g.index.split(":")[0], uuid=g.parent), samples) \
            if g.is_mig else None
        sampled = None if g.is_mig else _sample_for(g, samples)
        used = sampled.get("memory_used_mib") if sampled else None
        on_gpu = [p for p in processes if sampled and p.get("gpu_uuid") == sampled.get("uuid")]
        if g.is_mig and parent is not None:
            on_gpu = [p for p in processes if p.get("gpu_uuid") == parent.get("uuid")]
        holders: list[dict] = []
        for lab in sorted(holding, key=lambda lab: lab.user):
            if g.is_mig:  # its own processes: the only per-instance memory nvidia-smi gives
                memory = sum(p.get("used_mib") or 0 for p in on_gpu
                             if p.get("container") and p["container"] == lab.id) \
                    if on_gpu else None
            elif used is None:
                memory = None
            elif one_lab_per_gpu(policy) and len(holding) == 1:
                memory = used
            elif on_gpu:
                memory = sum(p.get("used_mib") or 0 for p in on_gpu
                             if p.get("container") and p["container"] == lab.id)
            else:
                memory = None
            holders.append({"user": lab.user, "profile": lab.profile, "since": lab.since,
                            "memory_used_mib": memory})
        attributed = sum(h["memory_used_mib"] or 0 for h in holders)
        if g.is_mig and holders and all(h["memory_used_mib"] is not None for h in holders):
            used = attributed
        idle_since = sampled.get("idle_since") if sampled else None
        rows.append({
            "gpu": g.index, "uuid": g.uuid, "model": g.name,
            "memory_mib": g.memory_mib or (sampled or {}).get("memory_total_mib") or 0,
            "policy": policy,
            "held_by": [h["user"] for h in holders],
            "holders": holders,
            "since": min((lab.since for lab in holding if lab.since), default=""),
            "utilisation": sampled.get("utilisation") if sampled else None,
            "memory_used_mib": used,
            "history": [point[1] for point in sampled.get("history", [])] if sampled else [],
            "memory_history": ([point[2] for point in sampled.get("history", [])]
                               if sampled else []),
            "idle_seconds": (max(0, int(now - idle_since)) if idle_since is not None
                             else (0 if sampled and sampled.get("utilisation") is not None
                                   else None)),
            "unattributed_mib": max(0, used - attributed) if used is not None else None,
        })
        if g.is_mig:
            rows[-1].update({
                "parent": g.parent, "parent_gpu": g.index.split(":")[0],
                "mig_profile": g.mig_profile, "unattributed_mib": None,
                "parent_memory_used_mib": parent.get("memory_used_mib") if parent else None,
                "parent_memory_total_mib": parent.get("memory_total_mib") if parent else None})
        if out_of_service is not None:
            rows[-1]["out_of_service"] = out_of_service.get(g.device_id)
    return rows


def duration(seconds: int | None) -> str:
    """Seconds in a few characters: "-", "40 s", "12 min", "3 h 05 min"."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def utilisation_text(row: dict) -> str:
    if row.get("mig_profile") and row["utilisation"] is None:
        return "unknown"  # NVML has none per MIG instance; DCGM would
    return "-" if row["utilisation"] is None else f"{row['utilisation']} %"


def memory_text(row: dict) -> str:
    total = f"{row['memory_mib']} MiB" if row["memory_mib"] else "?"
    if row["memory_used_mib"] is None:
        return f"? / {total}"
    return f"{row['memory_used_mib']} / {total}"


def holders_text(row: dict) -> str:
    if not row["holders"]:
        return "free"
    return ", ".join(h["user"] + (f" ({h['profile']})" if h["profile"] else "")
                     for h in row["holders"])


def as_text(rows: list[dict]) -> str:
    if not rows:
        return "No GPUs: labs run CPU-only."
    table = [("GPU", "MODEL", "HELD BY", "SINCE", "UTIL", "MEMORY USED", "IDLE", "POLICY")]
    broken = []
    parents_said = set()
    for r in rows:
        if r.get("parent") and r["parent"] not in parents_said:
            # The partitioned GPU itself, once, above its instances: not a device labs get.
            parents_said.add(r["parent"])
            whole = r["model"].rsplit(" MIG ", 1)[0]
            used = r.get("parent_memory_used_mib")
            total = r.get("parent_memory_total_mib")
            table.append((r["parent_gpu"], f"{whole} (MIG mode)", "-", "-", "unknown",
                          f"{'?' if used is None else used} / "
                          f"{f'{total} MiB' if total else '?'}", "-", r["policy"]))
        held = holders_text(r)
        if r.get("out_of_service"):
            held = "OUT OF SERVICE" + (f" ({held})" if r["held_by"] else "")
            broken.append(f"GPU {r['gpu']} is out of service since "
                          f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r['out_of_service']['since']))}: "
                          f"{r['out_of_service']['reason']}; no lab is given it until nvidia-smi "
                          f"reads it again or `invoke gpus --back {r['gpu']}`")
        gpu, model = r["gpu"], r["model"]
        if r.get("parent"):
            gpu, model = f"  {r['gpu']}", f"  MIG {r['mig_profile']}"
        table.append((gpu, model, held, r["since"] or "-",
                      utilisation_text(r), memory_text(r), duration(r["idle_seconds"]),
                      r["policy"]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    return "\n".join(["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()
                      for row in table] + ([""] + broken if broken else []))
