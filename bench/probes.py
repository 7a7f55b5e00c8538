"""What the benchmark watches while labs start: the hub API's latency, the hub's memory,
and the CPU time a lab container has used (from Docker's cgroup statistics)."""

from __future__ import annotations

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


class HubApiProbe(Sampler):
    """GET one hub API URL with a token every ``interval``; keep each answer's latency."""

    def __init__(self, url: str, token: str, interval: float = 0.1):
        super().__init__(interval)
        self.url = url
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"
        self.answers: list[tuple[float, float]] = []  # (sent, latency) of each 200
        self.failures = 0

    def sample(self) -> None:
        started = time.monotonic()
        resp = self.http.get(self.url, timeout=30)
        elapsed = time.monotonic() - started
        if resp.status_code == 200:
            self.answers.append((started, elapsed))
        else:
            self.failures += 1

    def latencies(self, since: float, until: float) -> list[float]:
        """Latencies of the requests sent from ``since`` to ``until`` (time.monotonic)."""
        return [latency for sent, latency in self.answers if since <= sent <= until]


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
