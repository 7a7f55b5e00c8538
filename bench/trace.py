"""One storm, lab by lab: where each start spent its time.

For every lab of a storm, on the machine's wall clock:

- ``requested``: the client sent ``POST /hub/api/users/<name>/server``;
- ``created`` and ``started``: Docker created and started its container (``docker events``);
- ``served``: the hub's spawner returned from ``start()``, the lab accepting connections
  (JupyterHub logs "User <name> took <s> seconds to start");
- ``routed``: the hub added the lab's route to the proxy ("Adding user <name> to proxy");
- ``ready``: the lab answered ``/api`` through the proxy, for the client.

A step the sources do not show stays None (a log line rotated away, an older JupyterHub's
wording). `bench.run` keeps the traces in results.json and draws trace.png from them.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STEPS = ("requested", "created", "started", "served", "routed", "ready")
# Segment between two steps -> what it is, for the plot's legend.
SEGMENTS = {("requested", "created"): "hub before Docker (profile, GPUs, image)",
            ("created", "started"): "created; waiting for a start slot (gpuhub), then started",
            ("started", "served"): "lab boots until it listens (hub sees it)",
            ("served", "routed"): "hub: route to the proxy",
            ("routed", "ready"): "answers through the proxy (client sees it)"}

LOG_LINE = re.compile(r"\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) [^\]]*\] (.*)")
SERVED = re.compile(r"User (\S+) took [\d.]+ seconds to start")
# JupyterHub's request log: "200 GET /hub/api/users/<name> (<user>@<ip>) 3.21ms".
API_TIME = re.compile(r"^200 GET (\S+) \(\S*\) ([\d.]+)ms$")
ROUTED = re.compile(r"Adding user (\S+) to proxy")


@dataclass
class LabTrace:
    user: str
    requested: float
    ready: float | None = None
    created: float | None = None
    started: float | None = None
    served: float | None = None
    routed: float | None = None

    def relative(self, t0: float) -> dict:
        """Each step in seconds after ``t0`` (the storm's first request)."""
        return {"user": self.user, **{step: None if (t := getattr(self, step)) is None
                                      else round(t - t0, 3) for step in STEPS}}


class DockerEvents:
    """Containers' create and start events, as Docker sends them, while the block runs.

    Watched live, not asked for afterwards: the engine keeps only its last 256 events for
    ``--since``, and the health checks' execs push a storm's out of them within seconds."""

    def __init__(self):
        self.events: list[dict] = []
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> DockerEvents:
        self._process = subprocess.Popen(
            ["docker", "events", "--filter", "type=container", "--filter", "event=create",
             "--filter", "event=start", "--format", "{{json .}}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            if line.strip():
                self.events.append(json.loads(line))

    def __exit__(self, *exc) -> None:
        time.sleep(0.5)  # the last events on their way
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)


def add_docker_steps(traces: list[LabTrace], events: list[dict],
                     container_of: dict[str, str]) -> None:
    """``created`` and ``started`` from the events of each user's lab container."""
    user_of = {name: user for user, name in container_of.items()}
    by_user = {t.user: t for t in traces}
    for event in events:
        name = ((event.get("Actor") or {}).get("Attributes") or {}).get("name", "")
        trace = by_user.get(user_of.get(name, ""))
        action = event.get("Action") or event.get("status")
        when = event.get("timeNano")
        if trace is None or when is None or action not in ("create", "start"):
            continue
        step = "created" if action == "create" else "started"
        if getattr(trace, step) is None:  # the first of each (a retry makes a second)
            setattr(trace, step, when / 1e9)


def add_hub_steps(traces: list[LabTrace], hub_log: str, since: float) -> None:
    """``served`` and ``routed`` from the hub's log lines (UTC, milliseconds) after ``since``."""
    by_user = {t.user: t for t in traces}
    for when, message in _lines_since(hub_log, since - 1):
        for pattern, step in ((SERVED, "served"), (ROUTED, "routed")):
            hit = pattern.search(message)
            if hit and hit.group(1) in by_user and getattr(by_user[hit.group(1)], step) is None:
                setattr(by_user[hit.group(1)], step, when)


def _lines_since(hub_log: str, since: float):
    """(time, message) of each of the hub's log lines from ``since`` on."""
    for line in hub_log.splitlines():
        found = LOG_LINE.search(line)
        if not found:
            continue
        when = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(
            tzinfo=datetime.UTC).timestamp()
        if when >= since:
            yield when, found.group(2)


def hub_request_times(hub_log: str, path: str, since: float, until: float) -> list[float]:
    """The hub's own time (ms, from its request log) of each ``GET path`` answered 200
    between ``since`` and ``until``: the part of a request's latency spent in the hub,
    from the moment it read the request. What the client saw beyond it was spent on the
    way (the proxy, the machine's scheduler, the client itself)."""
    times = []
    for when, message in _lines_since(hub_log, since):
        hit = API_TIME.search(message)
        if when <= until and hit and hit.group(1) == path:
            times.append(float(hit.group(2)))
    return times


def as_json(traces: list[LabTrace]) -> list[dict]:
    """The storm's traces, each step relative to its first request, in order of request."""
    if not traces:
        return []
    t0 = min(t.requested for t in traces)
    return [t.relative(t0) for t in sorted(traces, key=lambda t: t.requested)]


def plot(storms: dict[str, list[dict]], path: Path) -> None:
    """One panel per storm (``"gpuhub N=20"`` -> traces as `as_json` gives them): a bar per
    lab, coloured by segment, sorted by when it was ready."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in storms.items() if v]
    if not names:
        return
    fig, axes = plt.subplots(len(names), 1, figsize=(8, 2.2 + 0.16 * sum(
        len(storms[k]) for k in names)), squeeze=False)
    colours = dict(zip(SEGMENTS, ("tab:gray", "tab:purple", "tab:blue", "tab:orange",
                                  "tab:green")))
    for ax, name in zip(axes[:, 0], names):
        rows = sorted(storms[name], key=lambda r: (r["ready"] is None, r["ready"] or 0))
        for y, row in enumerate(rows):
            # Between each two steps the sources showed (a missing one: the two around it
            # make one segment, in the colour of the first).
            known = [s for s in STEPS if row.get(s) is not None]
            for a, b in zip(known, known[1:]):
                pair = next(k for k in SEGMENTS if k[0] == a)
                if row[b] >= row[a]:
                    ax.broken_barh([(row[a], row[b] - row[a])], (y - 0.4, 0.8),
                                   color=colours[pair], label=SEGMENTS[pair])
        ax.set_yticks(range(len(rows)), [r["user"] for r in rows], fontsize=6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("seconds after the first request", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    legend: dict[str, object] = {}
    for ax in axes[:, 0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="lower center", fontsize=7, ncol=2)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_dicts(traces: list[LabTrace]) -> list[dict]:
    return [asdict(t) for t in traces]
