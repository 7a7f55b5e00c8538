"""Who holds which GPU: one table for `invoke gpus` and the hub's admin page.

Built from the inventory the hub was started with and the labels on running lab
containers (Docker is the record of allocations).
"""

from __future__ import annotations

import html

from .gpus import Gpu
from .labels import GPUS as LABEL_GPUS
from .labels import SINCE as LABEL_SINCE
from .labels import USER as LABEL_USER

COLUMNS = ("gpu", "uuid", "model", "memory_mib", "policy", "held_by", "since")


def report(inventory: list[Gpu], labels_of_running_labs: list[dict], policy: str) -> list[dict]:
    """One row per GPU: its identity, the policy, and the users (with start time) holding it."""
    holders: dict[str, list[tuple[str, str]]] = {}
    for labels in labels_of_running_labs:
        for dev in filter(None, (labels.get(LABEL_GPUS) or "").split(",")):
            holders.setdefault(dev, []).append((labels.get(LABEL_USER, "?"), labels.get(LABEL_SINCE, "")))
    rows = []
    for g in inventory:
        held = holders.get(g.device_id, []) + (holders.get(g.index, []) if g.uuid else [])
        rows.append({
            "gpu": g.index, "uuid": g.uuid, "model": g.name, "memory_mib": g.memory_mib,
            "policy": policy,
            "held_by": sorted(u for u, _ in held),
            "since": min((s for _, s in held if s), default=""),
        })
    return rows


def as_text(rows: list[dict]) -> str:
    if not rows:
        return "No GPUs: labs run CPU-only."
    table = [("GPU", "MODEL", "MEMORY", "POLICY", "HELD BY", "SINCE")]
    for r in rows:
        memory = f"{r['memory_mib']} MiB" if r["memory_mib"] else "-"
        table.append((r["gpu"], r["model"], memory, r["policy"],
                      ", ".join(r["held_by"]) or "free", r["since"] or "-"))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip()
                     for row in table)


def as_html(rows: list[dict]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("GPU", "UUID", "Model", "Memory", "Policy",
                                               "Held by", "Since"))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r["gpu"], r["uuid"], r["model"], f"{r['memory_mib']} MiB", r["policy"],
            ", ".join(r["held_by"]) or "free", r["since"] or "-")) + "</tr>"
        for r in rows)
    return (f'<table class="table" id="gpu-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body or '<tr><td colspan=7>No GPUs: labs run CPU-only.</td></tr>'}"
            "</tbody></table>")
