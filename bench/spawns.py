"""Timing lab starts: the bare ``docker run`` floor, and N users spawning at once on a hub.

Every start is timed from the request until the lab's Jupyter server answers ``/api`` with
200: for a hub that is ``GET /user/<name>/api`` through the proxy, with the user's token.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import requests

from bench.hostcpu import EngineCpu, machine_busy
from bench.probes import HubApiProbe, MemoryProbe, cpu_seconds
from bench.trace import DockerEvents, LabTrace
from harness.hub import HubUser
from harness.stack import free_port
from harness.wait import wait_until

FLOOR_COMMAND = ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser",
                 "--ServerApp.token=", "--ServerApp.password="]

# The lab's own server under a hub (the lab image's command: gpuhub-singleuser, or
# jupyterhub-singleuser in other images), started bare: what a hub's lab pays on top of
# `jupyter lab`, without any hub's work. A stub in the same container answers its calls to
# the Hub API (version check, activity) at once.
HUB_STUB = """
import os, socket
reply = ("HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: 2\\r\\n"
         "X-JupyterHub-Version: " + os.environ["GPUHUB_BENCH_HUB_VERSION"] +
         "\\r\\nConnection: close\\r\\n\\r\\n{}").encode()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8081))
s.listen(64)
while True:
    c = s.accept()[0]
    c.recv(65536)
    c.sendall(reply)
    c.close()
"""


def singleuser_command(lab_command: list[str]) -> list[str]:
    """The lab image's own command, with the Hub API stub beside it."""
    return ["sh", "-c", 'python3 -I -S -c "$GPUHUB_BENCH_HUB_STUB" & exec "$@"', "sh",
            *lab_command]


def singleuser_env(hub_version: str) -> dict[str, str]:
    """What a hub hands the lab's server, pointing at the stub."""
    return {
        "GPUHUB_BENCH_HUB_STUB": HUB_STUB, "GPUHUB_BENCH_HUB_VERSION": hub_version,
        "JUPYTERHUB_API_TOKEN": "bench", "JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api",
        "JUPYTERHUB_CLIENT_ID": "jupyterhub-user-bench", "JUPYTERHUB_USER": "bench",
        "JUPYTERHUB_SERVICE_PREFIX": "/user/bench/", "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_URL": "http://0.0.0.0:8888/user/bench/",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": "/user/bench/oauth_callback",
        "JUPYTERHUB_ACTIVITY_URL": "http://127.0.0.1:8081/hub/api/users/bench/activity",
    }


class SpawnFailed(RuntimeError):
    pass


@dataclass
class FloorRun:
    seconds: float
    cpu_seconds: float  # the lab container's, at ready
    engine_cpu_seconds: float | None  # dockerd, containerd and its shim, for this start
    # Everything else the machine did meanwhile (the polling client, other people's work).
    other_cpu_seconds: float | None


def floor_once(client, image: str, name: str, label: str, timeout: float, *,
               engine: EngineCpu, command: list[str] = FLOOR_COMMAND,
               env: dict[str, str] | None = None, path: str = "/api") -> FloorRun:
    """`docker run` the lab image (plain JupyterLab by default); time it until ``path``
    answers, and take the CPU the lab and the Docker engine spent on it."""
    port = free_port()
    env_args = [arg for k in (env or {}) for arg in ("-e", k)]
    engine_before, busy_before = engine.daemons(), machine_busy()
    started = time.monotonic()
    try:
        container_id = subprocess.run(
            ["docker", "run", "-d", "--rm", "--name", name, "--label", label, *env_args,
             "-p", f"127.0.0.1:{port}:8888", image, *command],
            check=True, capture_output=True, text=True, env={**os.environ, **(env or {})},
        ).stdout.strip()
        # Every 20 ms: a hub's client learns of ready from the hub at once, so a coarser
        # poll here would make the floor look slower than it is.
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}{path}", timeout=2).ok,
                   timeout=timeout, interval=0.02, what=f"{name} to answer {path}",
                   logs=lambda: _container_logs(name))
        seconds = time.monotonic() - started
        busy = machine_busy() - busy_before
        engine_after = engine.daemons()
        engine_cpu = (None if engine_before is None or engine_after is None else
                      engine_after - engine_before + engine.shims([container_id]))
        lab_cpu = cpu_seconds(client, name)
        return FloorRun(seconds=seconds, cpu_seconds=lab_cpu, engine_cpu_seconds=engine_cpu,
                        other_cpu_seconds=(None if engine_cpu is None
                                           else busy - lab_cpu - engine_cpu))
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
                   barrier: threading.Barrier | None = None,
                   traces: list[LabTrace] | None = None) -> float:
    if barrier is not None:
        barrier.wait(timeout=60)
    started = time.monotonic()
    trace = LabTrace(user.name, requested=time.time())
    if traces is not None:
        traces.append(trace)
    resp = user.start(options)
    if resp.status_code not in (201, 202):
        raise SpawnFailed(f"starting {user.name}'s lab: HTTP {resp.status_code} {resp.text[:300]}")
    if resp.status_code == 202:
        wait_progress_ready(user, timeout)
    remaining = max(5.0, timeout - (time.monotonic() - started))
    wait_until(lambda: user.lab("GET", "").status_code == 200, timeout=remaining,
               interval=0.05, what=f"{user.name}'s lab to answer through the proxy",
               state=user.server)
    trace.ready = time.time()
    return time.monotonic() - started


@dataclass
class Round:
    """One storm: N users start their labs at the same moment."""

    n: int
    reps: int = 1  # storms of n users, one after the other, taken together
    seconds: list[float] = field(default_factory=list)
    hub_api_latencies: list[float] = field(default_factory=list)
    hub_api_own_ms: list[float] = field(default_factory=list)  # the hub's log: its own part
    hub_api_failures: int = 0
    # When each of those requests was sent (time.time()) and its latency, seconds.
    hub_api_samples: list[tuple[float, float]] = field(default_factory=list)
    hub_peak_working_set: int = 0
    hub_max_usage: int = 0
    lab_cpu_seconds: list[float] = field(default_factory=list)
    # Where the machine's CPU went from the first request until every lab answered.
    window_seconds: float = 0.0
    machine_busy_seconds: float = 0.0
    hub_cpu_seconds: float = 0.0  # the hub's containers (hub, and proxy if separate)
    # The same, per service (container name -> CPU-seconds in the window).
    hub_cpu_by_service: dict[str, float] = field(default_factory=dict)
    traces: list[LabTrace] = field(default_factory=list)
    docker_events: list[dict] = field(default_factory=list)  # containers' create and start
    engine_cpu_seconds: float | None = None  # dockerd, containerd, the labs' shims
    errors: list[str] = field(default_factory=list)


def storm(users: list[HubUser], options: dict, *, client, hub_container: str,
          service_containers: list[str], lab_container: Callable[[str], str], timeout: float,
          engine: EngineCpu, api_base: str | None = None) -> Round:
    """Start every user's lab at once; time each; watch the hub and the machine's CPU;
    then stop them all. The hub API probe asks ``api_base`` (the proxy's own address;
    default: the users' URL)."""
    result = Round(n=len(users))
    probe_user = users[0]
    barrier = threading.Barrier(len(users))
    api = HubApiProbe(f"{api_base or probe_user.base}/hub/api/users/{probe_user.name}",
                      probe_user.token)
    memory = MemoryProbe(client, hub_container)
    services_before = {c: cpu_seconds(client, c) for c in service_containers}
    events = DockerEvents()
    try:
        with api, memory, events, ThreadPoolExecutor(len(users)) as pool:
            engine_before, busy_before = engine.daemons(), machine_busy()
            started = time.monotonic()
            wall = time.time() - started  # the probe's clock (monotonic) to the traces'
            futures = [pool.submit(spawn_and_time, u, options, timeout, barrier, result.traces)
                       for u in users]
            for user, future in zip(users, futures):
                try:
                    result.seconds.append(future.result())
                except Exception as exc:
                    result.errors.append(f"{user.name}: {type(exc).__name__}: {exc}"[:2000])
            ended = time.monotonic()
            result.window_seconds = ended - started
            result.machine_busy_seconds = machine_busy() - busy_before
            engine_after = engine.daemons()
            names = {c: client.containers.get(c).name for c in service_containers}
            result.hub_cpu_by_service = {names[c]: cpu_seconds(client, c) - before
                                         for c, before in services_before.items()}
            result.hub_cpu_seconds = sum(result.hub_cpu_by_service.values())
        lab_ids = []
        for user in users:
            try:
                name = lab_container(user.name)
                result.lab_cpu_seconds.append(cpu_seconds(client, name))
                lab_ids.append(client.api.inspect_container(name)["Id"])
            except Exception as exc:  # the lab failed to start; its error is recorded above
                result.errors.append(f"{user.name}: no CPU figure ({exc})"[:500])
        if engine_before is not None and engine_after is not None:
            result.engine_cpu_seconds = engine_after - engine_before + engine.shims(lab_ids)
    finally:
        stop_all(users)
    result.docker_events = events.events
    # Only the requests sent during the storm: the probe also runs while this function
    # reads each service's CPU afterwards, when the hub has nothing left to do.
    result.hub_api_latencies = api.latencies(started, ended)
    result.hub_api_samples = [(sent + wall, latency) for sent, latency in api.answers
                              if started <= sent <= ended]
    result.hub_api_failures = api.failures + len(api.errors)
    result.hub_peak_working_set = memory.peak_working_set
    result.hub_max_usage = memory.max_usage
    return result


def merge(rounds: list[Round]) -> Round:
    """Several storms of the same size as one round: every start's figures together."""
    merged = Round(n=rounds[0].n, reps=len(rounds), engine_cpu_seconds=0.0)
    for r in rounds:
        merged.seconds += r.seconds
        merged.hub_api_latencies += r.hub_api_latencies
        merged.hub_api_samples += r.hub_api_samples
        merged.hub_api_own_ms += r.hub_api_own_ms
        merged.hub_api_failures += r.hub_api_failures
        merged.hub_peak_working_set = max(merged.hub_peak_working_set, r.hub_peak_working_set)
        merged.hub_max_usage = max(merged.hub_max_usage, r.hub_max_usage)
        merged.lab_cpu_seconds += r.lab_cpu_seconds
        merged.window_seconds += r.window_seconds
        merged.machine_busy_seconds += r.machine_busy_seconds
        merged.hub_cpu_seconds += r.hub_cpu_seconds
        for name, seconds in r.hub_cpu_by_service.items():
            merged.hub_cpu_by_service[name] = merged.hub_cpu_by_service.get(name, 0.0) + seconds
        merged.traces += r.traces
        merged.docker_events += r.docker_events
        merged.engine_cpu_seconds = (None if None in (merged.engine_cpu_seconds,
                                                      r.engine_cpu_seconds)
                                     else merged.engine_cpu_seconds + r.engine_cpu_seconds)
        merged.errors += r.errors
    return merged


def stop_all(users: list[HubUser], timeout: float = 120) -> None:
    """Stop every user's lab (in parallel) and wait until the hub says they are gone."""
    def stop(user: HubUser) -> None:
        if user.server():
            user.stop(timeout=timeout)

    with ThreadPoolExecutor(max(1, len(users))) as pool:
        list(pool.map(stop, users))


def idle_cost(client, service_containers: list[str], seconds: float,
              engine: EngineCpu | None = None) -> dict[str, float]:
    """CPU-seconds per minute each of the hub's services uses while no lab starts (GPU
    sampling on where the stack samples GPUs): what the stack costs a machine at rest. With
    ``engine``, also the Docker engine's daemons meanwhile (``docker engine``: health checks
    are execs the engine pays for), and the whole machine (``machine``)."""
    names = {c: client.containers.get(c).name for c in service_containers}
    before = {c: cpu_seconds(client, c) for c in service_containers}
    daemons_before, busy_before = (engine.daemons() if engine else None), machine_busy()
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    per_minute = 60 / elapsed
    cost = {names[c]: round((cpu_seconds(client, c) - before[c]) * per_minute, 3)
            for c in service_containers}
    daemons_after = engine.daemons() if engine else None
    if daemons_before is not None and daemons_after is not None:
        cost["docker engine"] = round((daemons_after - daemons_before) * per_minute, 3)
    cost["machine"] = round((machine_busy() - busy_before) * per_minute, 3)
    return cost
