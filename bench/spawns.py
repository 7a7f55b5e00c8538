"""Timing lab starts: the bare ``docker run`` floor, and N users spawning at once on a hub.

Every start is timed from the request until the lab's Jupyter server answers ``/api`` with
200: for a hub that is ``GET /user/<name>/api`` through the proxy, with the user's token.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests
from probes import HubApiProbe, MemoryProbe, cpu_seconds
from support.hub import HubUser
from support.stack import free_port
from support.wait import wait_until

FLOOR_COMMAND = ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser",
                 "--ServerApp.token=", "--ServerApp.password="]


class SpawnFailed(RuntimeError):
    pass


@dataclass
class FloorRun:
    seconds: float
    cpu_seconds: float


def floor_once(client, image: str, name: str, label: str, timeout: float) -> FloorRun:
    """`docker run` the lab image with plain JupyterLab; time it until /api answers."""
    port = free_port()
    started = time.monotonic()
    try:
        subprocess.run(["docker", "run", "-d", "--rm", "--name", name, "--label", label,
                        "-p", f"127.0.0.1:{port}:8888", image, *FLOOR_COMMAND],
                       check=True, capture_output=True, text=True)
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/api", timeout=2).ok,
                   timeout=timeout, interval=0.05, what=f"{name} to answer /api",
                   logs=lambda: _container_logs(name))
        seconds = time.monotonic() - started
        return FloorRun(seconds=seconds, cpu_seconds=cpu_seconds(client, name))
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def _container_logs(name: str) -> str:
    out = subprocess.run(["docker", "logs", "--tail", "40", name], capture_output=True, text=True)
    return out.stdout + out.stderr


def wait_progress_ready(user: HubUser, timeout: float) -> None:
    """Follow the hub's spawn progress stream (what the spawn page does) until ready.

    One long-lived request per user, instead of polling, so waiting does not load the hub.
    """
    url = f"{user.base}/hub/api/users/{user.name}/server/progress"
    with requests.get(url, headers={"Authorization": f"token {user.token}"}, stream=True,
                      timeout=(10, timeout)) as resp:
        if resp.status_code != 200:
            return  # not pending any more (or already ready): the lab poll decides
        # chunk_size=1: events are tiny and must be seen as soon as they arrive.
        for line in resp.iter_lines(chunk_size=1, decode_unicode=True):
            if not line or not line.startswith("data:"):
                continue
            event = json.loads(line[len("data:"):])
            if event.get("ready"):
                return
            if event.get("failed"):
                raise SpawnFailed(f"{user.name}: {event.get('message')}")


def spawn_and_time(user: HubUser, options: dict, timeout: float,
                   barrier: threading.Barrier | None = None) -> float:
    if barrier is not None:
        barrier.wait(timeout=60)
    started = time.monotonic()
    resp = user.start(options)
    if resp.status_code not in (201, 202):
        raise SpawnFailed(f"starting {user.name}'s lab: HTTP {resp.status_code} {resp.text[:300]}")
    if resp.status_code == 202:
        wait_progress_ready(user, timeout)
    remaining = max(5.0, timeout - (time.monotonic() - started))
    wait_until(lambda: user.lab("GET", "").status_code == 200, timeout=remaining,
               interval=0.05, what=f"{user.name}'s lab to answer through the proxy",
               state=user.server)
    return time.monotonic() - started


@dataclass
class Round:
    """One storm: N users start their labs at the same moment."""

    n: int
    seconds: list[float] = field(default_factory=list)
    hub_api_latencies: list[float] = field(default_factory=list)
    hub_api_failures: int = 0
    hub_peak_working_set: int = 0
    hub_max_usage: int = 0
    lab_cpu_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def storm(users: list[HubUser], options: dict, *, client, hub_container: str,
          lab_container: Callable[[str], str], timeout: float) -> Round:
    """Start every user's lab at once; time each; watch the hub; then stop them all."""
    result = Round(n=len(users))
    probe_user = users[0]
    barrier = threading.Barrier(len(users))
    api = HubApiProbe(f"{probe_user.base}/hub/api/users/{probe_user.name}", probe_user.token)
    memory = MemoryProbe(client, hub_container)
    try:
        with api, memory, ThreadPoolExecutor(len(users)) as pool:
            futures = [pool.submit(spawn_and_time, u, options, timeout, barrier) for u in users]
            for user, future in zip(users, futures):
                try:
                    result.seconds.append(future.result())
                except Exception as exc:
                    result.errors.append(f"{user.name}: {type(exc).__name__}: {exc}"[:2000])
        for user in users:
            try:
                result.lab_cpu_seconds.append(cpu_seconds(client, lab_container(user.name)))
            except Exception as exc:  # the lab failed to start; its error is recorded above
                result.errors.append(f"{user.name}: no CPU figure ({exc})"[:500])
    finally:
        stop_all(users)
    result.hub_api_latencies = api.latencies
    result.hub_api_failures = api.failures + len(api.errors)
    result.hub_peak_working_set = memory.peak_working_set
    result.hub_max_usage = memory.max_usage
    return result


def stop_all(users: list[HubUser], timeout: float = 120) -> None:
    """Stop every user's lab (in parallel) and wait until the hub says they are gone."""
    def stop(user: HubUser) -> None:
        if user.server():
            user.stop(timeout=timeout)

    with ThreadPoolExecutor(max(1, len(users))) as pool:
        list(pool.map(stop, users))
