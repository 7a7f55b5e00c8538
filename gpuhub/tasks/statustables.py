"""`invoke status` at a glance: the stack's services, then the labs, from `docker inspect`.

Built from what Docker records (state, health, start time, labels read as JSON), in two
short tables instead of compose's 300-column one.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence

from gpuhub.core.labels import PROFILE, SINCE, USER, gpus_of
from gpuhub.core.names import COMPOSE_SERVICE_LABEL


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows)


def _since(timestamp: str, now: datetime.datetime) -> str:
    """ "2026-12-01 22:10 UTC (3 h ago)" from Docker's or gpuhub's ISO time; "-" if none."""
    if not timestamp or timestamp.startswith("0001-"):
        return "-"
    # Docker writes nanoseconds and "Z", which Python 3.10's fromisoformat does not read.
    text = re.sub(r"(\.\d{6})\d+", r"\1", timestamp).replace("Z", "+00:00")
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return timestamp
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    seconds = max(0, int((now - when).total_seconds()))
    ago = (f"{seconds} s" if seconds < 120 else f"{seconds // 60} min" if seconds < 7200
           else f"{seconds // 3600} h" if seconds < 172800 else f"{seconds // 86400} days")
    return f"{when.astimezone(datetime.UTC):%Y-%m-%d %H:%M} UTC ({ago} ago)"


def services_table(containers: list[dict], now: datetime.datetime) -> str:
    """One line per compose service: state, health and since when."""
    rows = [("SERVICE", "STATE", "HEALTH", "SINCE")]
    for info in sorted(containers, key=lambda i: i["Config"]["Labels"].get(COMPOSE_SERVICE_LABEL, "")):
        state = info.get("State") or {}
        status = state.get("Status", "?")
        since = state.get("StartedAt") if status == "running" else state.get("FinishedAt")
        rows.append((info["Config"]["Labels"].get(COMPOSE_SERVICE_LABEL, "?"), status,
                     (state.get("Health") or {}).get("Status", "-"), _since(since or "", now)))
    return _table(rows) if len(rows) > 1 else "No service of this project exists: `invoke up`."


def swarm_services_table(tasks: list[dict], service_names: dict[str, str],
                         node_names: dict[str, str], health: dict[str, str],
                         now: datetime.datetime) -> str:
    """One line per task of the stack's services: service, node, state, health and since.

    ``service_names`` and ``node_names`` map Swarm's IDs to names; ``health`` maps a
    container ID to its health, for the containers this node can inspect (the others
    say "-").
    """
    rows = [("SERVICE", "NODE", "STATE", "HEALTH", "SINCE")]
    for task in sorted(tasks, key=lambda t: (service_names.get(t.get("ServiceID") or "", ""),
                                             t.get("Slot") or 0)):
        status = task.get("Status") or {}
        container = (status.get("ContainerStatus") or {}).get("ContainerID", "")
        rows.append((service_names.get(task.get("ServiceID") or "", "?"),
                     node_names.get(task.get("NodeID") or "", "?"), status.get("State", "?"),
                     health.get(container, "-"), _since(status.get("Timestamp") or "", now)))
    return _table(rows) if len(rows) > 1 else "No service of this stack runs: `invoke up`."


# The IMAGE column: the lab runs what its image name means now, or an image since rebuilt
# (after an upgrade: the lab picks the new one up at its next start).
IMAGE_CURRENT, IMAGE_OLD = "current", "old (new at next start)"


def labs_table(labs: list[dict], now: datetime.datetime,
               image_ids: dict[str, str] | None = None) -> str:
    """One line per running lab: its user, profile, GPUs, since when and, given
    ``image_ids`` (image name -> the ID it names on this host now), whether it runs the
    image its name means now."""
    if not labs:
        return "No lab is running."
    rows = [("USER", "PROFILE", "GPUS", "SINCE") + (("IMAGE",) if image_ids is not None else ())]
    old = 0
    for info in sorted(labs, key=lambda i: i["Config"]["Labels"].get(USER, "")):
        labels = info["Config"]["Labels"]
        gpus = gpus_of(labels)
        row: tuple[str, ...] = (labels.get(USER, "?"), labels.get(PROFILE, "-"),
                                ", ".join(gpus) or "none", _since(labels.get(SINCE, ""), now))
        if image_ids is not None:
            now_id = image_ids.get(info["Config"].get("Image", ""))
            current = now_id is None or now_id == info.get("Image")
            old += not current
            row += (IMAGE_CURRENT if current else IMAGE_OLD,)
        rows.append(row)
    note = (f"\n{old} lab(s) run an image that has been rebuilt since they started; they get "
            "the new one when their user restarts them.") if old else ""
    return _table(rows) + note
