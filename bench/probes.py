"""What the benchmark watches while labs start: the hub API's latency, the hub's memory,
and the CPU time a lab container has used (from Docker's cgroup statistics)."""

from __future__ import annotations

import multiprocessing
import threading
import time

import docker
import requests

MIB = 1024 * 1024


def docker_client() -> docker.DockerClient:
    # "auto": the engine may be older than docker-py's default API version (20.10 is 1.41).
    return docker.from_env(version="auto")


def _one_shot(client: docker.DockerClient, container: str) -> dict:
    return client.api.stats(container, stream=False, one_shot=True)


def cpu_seconds(client: docker.DockerClient, container: str) -> float:
    """CPU time (user + system, all cores) the container has used since it started."""
    return _one_shot(client, container)["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9


def address(client: docker.DockerClient, container: str, port: int) -> str:
    """``http://<ip>:<port>`` of a container on its (first) network: what a request from
    another machine reaches after Docker's NAT. The published port on 127.0.0.1 is served
    by Docker's userland proxy instead, a process on this machine's busy cores that no
    remote user's request passes through."""
    networks = client.api.inspect_container(container)["NetworkSettings"]["Networks"]
    ip = next((n["IPAddress"] for _, n in sorted(networks.items()) if n.get("IPAddress")), "")
    if not ip:
        raise RuntimeError(f"container {container} has no IP address on any network")
    return f"http://{ip}:{port}"


def working_set(memory_stats: dict) -> int:
    """Memory in use without reclaimable page cache, as `docker stats` shows it."""
    stats = memory_stats.get("stats") or {}
    usage = memory_stats.get("usage", 0)
    for key in ("total_inactive_file", "inactive_file", "cache"):
        if key in stats:
            return usage - stats[key]
    return usage


class Sampler(threading.Thread):
    """A background loop that calls ``sample()`` every ``interval`` seconds until stopped."""

    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval = interval
        self._stop_event = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        while not self._stop_event.is_set():
            started = time.monotonic()
            try:
                self.sample()
            except Exception as exc:  # one failed sample must not end the run
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop_event.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def sample(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class HubApiProbe:
    """GET one hub API URL with a token every ``interval``; keep each answer's latency.

    The requests go from a process of its own, as a user's browser's do: in the benchmark's
    process they would also wait for its threads (one per starting user) to let go of the
    GIL, and that wait is the benchmark's, not the hub's. Times are ``time.monotonic()``,
    the same clock in both processes.
    """

    def __init__(self, url: str, token: str, interval: float = 0.1):
        self.url, self.token, self.interval = url, token, interval
        self.answers: list[tuple[float, float]] = []  # (sent, latency) of each 200
        self.failures = 0
        self.errors: list[str] = []
        self._process = None
        self._conn = None

    def __enter__(self):
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._conn, theirs = context.Pipe()
        self._process = context.Process(target=_probe_hub_api, daemon=True,
                                        args=(self.url, self.token, self.interval, theirs))
        self._process.start()
        theirs.close()
        try:
            ready = self._conn.poll(60) and self._conn.recv() == "ready"
        except (OSError, EOFError):
            ready = False
        if not ready:
            self._process.kill()
            raise RuntimeError("the hub API probe's process did not start (within 60 s)")
        return self

    def __exit__(self, *exc):
        try:
            self._conn.send("stop")
            if self._conn.poll(60):
                self.answers, self.failures, self.errors = self._conn.recv()
            else:
                self.errors.append("the hub API probe's process did not report back")
        except (OSError, EOFError) as err:
            self.errors.append(f"the hub API probe's process ended early: {err}")
        finally:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
            self._conn.close()

    def latencies(self, since: float, until: float) -> list[float]:
        """Latencies of the requests sent from ``since`` to ``until`` (time.monotonic)."""
        return [latency for sent, latency in self.answers if since <= sent <= until]


def _probe_hub_api(url: str, token: str, interval: float, conn) -> None:
    """HubApiProbe's process: request every ``interval`` until told to stop, then report."""
    http = requests.Session()
    http.headers["Authorization"] = f"token {token}"
    answers: list[tuple[float, float]] = []
    failures, errors = 0, []
    conn.send("ready")
    wait = 0.0
    while not conn.poll(wait):
        started = time.monotonic()
        try:
            resp = http.get(url, timeout=30)
            elapsed = time.monotonic() - started
            if resp.status_code == 200:
                answers.append((started, elapsed))
            else:
                failures += 1
        except Exception as exc:  # one failed request must not end the run
            errors.append(f"{type(exc).__name__}: {exc}")
        wait = max(0.0, interval - (time.monotonic() - started))
    conn.send((answers, failures, errors))


class MemoryProbe(Sampler):
    """Sample a container's memory; keep the peak working set and the cgroup's max usage."""

    def __init__(self, client: docker.DockerClient, container: str, interval: float = 0.25):
        super().__init__(interval)
        self.client = client
        self.container = container
        self.peak_working_set = 0
        self.max_usage = 0  # cgroup v1 only: the kernel's own high-water mark (with cache)

    def sample(self) -> None:
        memory = _one_shot(self.client, self.container).get("memory_stats") or {}
        self.peak_working_set = max(self.peak_working_set, working_set(memory))
        self.max_usage = max(self.max_usage, memory.get("max_usage", 0))
