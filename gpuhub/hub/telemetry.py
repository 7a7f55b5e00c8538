"""GPU telemetry in the hub: the sampler's readings joined with who holds each GPU.

The one interface the hub and the tasks read GPUs through:

- :func:`read_samples` reads the gpu-sampler's file (``names.GPU_SAMPLES_FILE``) and
  says plainly why there is no usable reading (missing, unreadable, stale, driver error);
- :class:`GpuBoard` keeps the current table (:func:`gpuhub.core.gpureport.report`), refreshed
  in a background thread every ``GPU_SAMPLE_INTERVAL``, for the admin page and the
  metrics, so that neither blocks the hub's event loop on Docker;
- ``python3 -m gpuhub.hub.hubmodes`` prints the same table as JSON (``invoke gpus`` runs it
  in the hub container);
- the Prometheus metrics (served by the hub's own ``/hub/metrics``, which JupyterHub
  protects with the ``read:metrics`` scope) come from the board and from the spawner's
  counters, which :func:`install` creates when the hub's configuration is loaded.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from gpuhub.core import gpus as gpu_inventory
from gpuhub.core import names
from gpuhub.core.gpureport import labs_from_docker, report
from gpuhub.core.labels import PROJECT as LABEL_PROJECT
from gpuhub.core.outofservice import read as read_out_of_service
from gpuhub.core.samples import read_samples
from gpuhub.hub.workfolders import WorkFolderCollector, WorkUse

MIB = 1024 * 1024



@dataclass
class Board:
    """One refresh of the table: GPU rows, labs per profile, and what is missing."""

    rows: list[dict] = field(default_factory=list)
    labs_per_profile: dict[str, int] = field(default_factory=dict)
    problem: str = "not read yet"
    taken_at: float = 0.0
    sampled: bool = False  # utilisation and memory are in the rows
    waiting: list[dict] = field(default_factory=list)  # the line for GPUs, in order

    def as_json(self) -> dict:
        return {"rows": self.rows, "labs_per_profile": self.labs_per_profile,
                "problem": self.problem, "taken_at": self.taken_at, "sampled": self.sampled,
                "waiting": self.waiting}


def read_line(path: Path = Path(names.HUB_DATA_DIR) / names.GPU_LINE_FILE) -> list[dict]:
    """Who waits in line for GPUs (the hub keeps it on its volume); [] if unreadable."""
    try:
        waiting = json.loads(Path(path).read_text())
        return [w for w in waiting if isinstance(w, dict) and "user" in w]
    except (OSError, ValueError, TypeError):
        return []


def compose_board(project: str, policy: str, inventory: list[gpu_inventory.Gpu],
                  list_labs: Callable[[], list[dict]],
                  samples_path: Path = Path(names.GPU_SAMPLES_FILE),
                  now: float | None = None,
                  line_path: Path = Path(names.HUB_DATA_DIR) / names.GPU_LINE_FILE,
                  out_path: Path = Path(names.HUB_DATA_DIR) / names.GPU_OUT_OF_SERVICE_FILE,
                  ) -> Board:
    """The board of a compose deployment: labs from Docker, readings from the sampler, the
    GPUs out of service as the hub keeps them."""
    now = time.time() if now is None else now
    containers = list_labs()
    labs = labs_from_docker(containers)
    samples, problem = read_samples(samples_path, now) if inventory else (None, "")
    out = {e.device: {"reason": e.reason, "since": e.since} for e in read_out_of_service(out_path)}
    return Board(rows=report(inventory, labs, policy, samples, now, out),
                 labs_per_profile=dict(Tally(lab.profile or "default" for lab in labs)),
                 problem=problem, taken_at=now, sampled=samples is not None,
                 waiting=read_line(line_path))


def docker_lab_lister(project: str) -> Callable[[], list[dict]]:
    """Running labs of ``project`` as Docker lists them (through the hub's DOCKER_HOST)."""
    import docker

    client = docker.from_env(timeout=10)
    return lambda: client.api.containers(filters={"label": f"{LABEL_PROJECT}={project}"})


def swarm_board(settings, client=None) -> Board:
    """Swarm mode: every node's GPUs and the running lab tasks holding them. The sampler
    is a single-host service: Swarm nodes' utilisation is not read (docs/howto/swarm.md)."""
    import docker

    from gpuhub.core import swarm

    client = client or docker.from_env(timeout=10)
    kind = settings.swarm_gpu_resource
    tasks = []
    for service in client.api.services(
            filters={"label": f"{LABEL_PROJECT}={settings.compose_project_name}"}):
        tasks += client.api.tasks(filters={"service": service["ID"], "desired-state": "running"})
    nodes = [n.attrs for n in client.nodes.list()]
    rows = []
    for r in swarm.report(swarm.node_gpus(nodes, kind), tasks, kind):
        rows.append({
            "gpu": r["node"], "uuid": r["uuid"], "model": f"node {r['state']}/{r['availability']}",
            "memory_mib": 0, "policy": "swarm", "held_by": r["held_by"],
            "holders": [{"user": u, "profile": "", "since": r["since"], "memory_used_mib": None}
                        for u in r["held_by"]],
            "since": r["since"], "utilisation": None, "memory_used_mib": None, "history": [],
            "memory_history": [],
            "idle_seconds": None, "unattributed_mib": None, "node": r["node"]})
    return Board(rows=rows, problem="utilisation is not sampled in swarm mode",
                 taken_at=time.time())


class GpuBoard:
    """The current board, kept fresh by a daemon thread that starts on first use.

    ``latest()`` never waits on Docker once a first board exists; a refresh that fails
    keeps the last rows and says why in ``problem``.
    """

    def __init__(self, setup: Callable[[], tuple[Callable[[], Board], float]]):
        self._setup = setup
        self._fetch: Callable[[], Board] | None = None
        self.interval = 5.0
        self._board = Board()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def refresh(self) -> Board:
        try:
            if self._fetch is None:
                self._fetch, self.interval = self._setup()
            board = self._fetch()
        except Exception as err:  # Docker or the broker is down: keep the last rows
            board = Board(rows=self._board.rows, labs_per_profile=self._board.labs_per_profile,
                          problem=f"could not read the labs from Docker ({err})",
                          taken_at=self._board.taken_at)
        with self._lock:
            self._board = board
        return board

    def latest(self) -> Board:
        """The newest board; the first call (of the process) reads it synchronously."""
        thread = None
        with self._lock:
            if self._thread is None:
                thread = self._thread = threading.Thread(target=self._run, daemon=True,
                                                         name="gpuhub-gpu-board")
        if thread is not None:  # the first call
            self.refresh()
            thread.start()
        with self._lock:
            return self._board

    def cached(self) -> Board:
        """The newest board without ever reading (the metrics scrape uses it)."""
        with self._lock:
            started = self._thread is not None
            board = self._board
        if not started:
            threading.Thread(target=self.latest, daemon=True).start()
        return board

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.refresh()


class BoardCollector:
    """Prometheus gauges from the board: per GPU, per holder, labs per profile."""

    def __init__(self, board: GpuBoard):
        self.board = board

    def describe(self):
        return []  # collected fresh at each scrape: nothing to check at registration

    def collect(self):
        board = self.board.cached()
        gpu = ["gpu", "uuid", "model"]
        util = GaugeMetricFamily("gpuhub_gpu_utilisation_percent",
                                 "GPU utilisation over the driver's last sample period.",
                                 labels=gpu)
        used = GaugeMetricFamily("gpuhub_gpu_memory_used_bytes", "GPU memory in use.",
                                 labels=gpu)
        total = GaugeMetricFamily("gpuhub_gpu_memory_total_bytes", "GPU memory in all.",
                                  labels=gpu)
        idle = GaugeMetricFamily("gpuhub_gpu_idle_seconds",
                                 "Seconds the GPU has been below GPU_IDLE_UTILISATION.",
                                 labels=gpu)
        broken = GaugeMetricFamily("gpuhub_gpu_out_of_service",
                                   "1 while the GPU is out of service after a fault (no lab "
                                   "is given it), else 0.", labels=gpu)
        holder = GaugeMetricFamily("gpuhub_gpu_holder",
                                   "1 for each lab holding the GPU (user, profile).",
                                   labels=[*gpu, "user", "profile"])
        mig = GaugeMetricFamily("gpuhub_gpu_mig_instance",
                                "1 for each MIG instance labs may be given: its parent GPU's "
                                "UUID and its profile (its utilisation is not read: NVML has "
                                "none per instance).", labels=[*gpu, "parent", "profile"])
        for row in board.rows:
            key = [row["gpu"], row["uuid"], row["model"]]
            if row.get("mig_profile"):
                mig.add_metric([*key, row["parent"], row["mig_profile"]], 1)
            if row["memory_mib"]:
                total.add_metric(key, row["memory_mib"] * MIB)
            if row["utilisation"] is not None:
                util.add_metric(key, row["utilisation"])
            if row["memory_used_mib"] is not None:
                used.add_metric(key, row["memory_used_mib"] * MIB)
            if row["idle_seconds"] is not None:
                idle.add_metric(key, row["idle_seconds"])
            if "out_of_service" in row:  # compose mode: the hub keeps the list
                broken.add_metric(key, 1 if row["out_of_service"] else 0)
            for h in row["holders"]:
                holder.add_metric([*key, h["user"], h["profile"]], 1)
        labs = GaugeMetricFamily("gpuhub_labs_running", "Running labs, by profile.",
                                 labels=["profile"])
        for profile, count in sorted(board.labs_per_profile.items()):
            labs.add_metric([profile], count)
        line = GaugeMetricFamily("gpuhub_gpu_queue_length",
                                 "Users waiting in line for a GPU.")
        line.add_metric([], len(board.waiting))
        oldest = GaugeMetricFamily("gpuhub_gpu_queue_oldest_wait_seconds",
                                   "How long the first in line has waited (0: nobody waits).")
        oldest.add_metric([], max((time.time() - w.get("since", time.time())
                                   for w in board.waiting), default=0))
        up = GaugeMetricFamily("gpuhub_gpu_sampler_up",
                               "1 while the gpu-sampler's readings are fresh.")
        up.add_metric([], 1 if board.sampled and not board.problem else 0)
        yield from (util, used, total, idle, broken, holder, mig, labs, line, oldest, up)


@dataclass
class HubTelemetry:
    """The hub process's telemetry: the GPU board (admin page, metrics) and the spawner's
    counters, all in one Prometheus registry."""

    board: GpuBoard
    spawn_duration: Histogram
    spawns_refused: Counter
    # WORK_QUOTA: the work folders' report (the metrics, the pages); None without a quota.
    work_use: WorkUse | None = None


_installed: HubTelemetry | None = None


def install(board_source: Callable[[], tuple[Callable[[], Board], float]],
            work_use: WorkUse | None = None,
            registry: CollectorRegistry = REGISTRY) -> HubTelemetry:
    """Create the hub's board and metrics and register them: once per hub process, by
    ``jupyterhub_config.py`` (``board_source``: the mode's, ``hub_mode(...).board_source``).

    Nothing is created at import, so importing gpuhub's hub modules fills no registry
    and starts no thread.
    """
    global _installed
    spawn_duration = Histogram(
        "gpuhub_spawn_duration_seconds",
        "Seconds from pressing Start until the lab served, for labs that started, by profile.",
        ["profile"], buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600), registry=registry)
    spawns_refused = Counter(
        "gpuhub_spawns_refused",
        "Starts refused or failed before the lab served, by reason (gpus_busy, gpu_limit, "
        "no_gpus, queue_full, queue_timeout, bad_profile, lab_firewall_down, "
        "lab_memory_down, lab_died, gpu_fault, timeout, docker_down, broker_refused, "
        "work_folder, docker_error, error).", ["reason"], registry=registry)
    board = GpuBoard(board_source)
    registry.register(BoardCollector(board))
    if work_use is not None:  # WORK_QUOTA: each work folder's use and limit
        registry.register(WorkFolderCollector(work_use))
    _installed = HubTelemetry(board, spawn_duration, spawns_refused, work_use)
    return _installed


def installed() -> HubTelemetry:
    """The hub's telemetry, as :func:`install` made it."""
    if _installed is None:
        raise RuntimeError("gpuhub's telemetry is not installed: jupyterhub_config.py "
                           "installs it (gpuhub.hub.telemetry.install)")
    return _installed
