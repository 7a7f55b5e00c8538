"""What GPU telemetry costs: CPU-seconds per minute of the gpu-sampler service.

Against a running stack (``--project``), for ``--seconds`` on a quiet machine, it counts:
- the gpu-sampler container's own CPU (nvidia-smi twice per GPU_SAMPLE_INTERVAL, the
  JSON file), from Docker's cgroup statistics;
- its containerd-shim, from /proc (it would run a health check's execs; the sampler has
  none, see docs/bench/telemetry/sampler-cost-with-healthcheck.json for why);
- the hub's GPU board, which refreshes every interval once the page or the metrics are
  used: the hub's and the broker's containers, measured with the page opened once
  before, as an upper bound (the hub's own idle work, culler and health checks, is in it).

Compare with one lab start: about 1.0 CPU-second (README, Spawn benchmark).

    python -m bench.sampler_cost --project gpuhub --seconds 120
"""

from __future__ import annotations

import argparse
import json
import time

from bench.hostcpu import EngineCpu
from bench.probes import cpu_seconds, docker_client


def containers(client, project: str) -> dict[str, str]:
    """Service name -> container ID, for the project's running services."""
    found = client.api.containers(filters={"label": f"com.docker.compose.project={project}"})
    return {c["Labels"]["com.docker.compose.service"]: c["Id"] for c in found}


def per_minute(client, engine: EngineCpu, watched: dict[str, str], seconds: float) -> dict:
    """CPU-seconds per minute of each watched container (and the sampler's shim)."""
    before = {name: cpu_seconds(client, cid) for name, cid in watched.items()}
    shim_before = engine.shims([watched["gpu-sampler"]])
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    found = {name: (cpu_seconds(client, cid) - before[name]) * 60 / elapsed
             for name, cid in watched.items()}
    found["gpu-sampler shim"] = (engine.shims([watched["gpu-sampler"]]) - shim_before) * 60 / elapsed
    return {k: round(v, 4) for k, v in found.items()}


def measure(project: str, seconds: float, start_board=None) -> dict:
    """Two phases of ``seconds``: the hub's board not yet used, then used (``start_board``
    opens the GPU page once). The hub's and broker's difference is the board's cost."""
    client = docker_client()
    services = containers(client, project)
    watched = {name: services[name] for name in ("gpu-sampler", "hub", "docker-proxy")}
    engine = EngineCpu()
    idle = per_minute(client, engine, watched, seconds)
    board = None
    if start_board is not None:
        start_board()
        board = per_minute(client, engine, watched, seconds)
    env = client.api.inspect_container(watched["gpu-sampler"])["Config"]["Env"]
    interval = next((e.split("=", 1)[1] for e in env if e.startswith("GPU_SAMPLE_INTERVAL=")),
                    "?")
    return {"seconds_per_phase": seconds, "interval": interval,
            "cpu_seconds_per_minute_board_unused": idle,
            "cpu_seconds_per_minute_board_used": board}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", required=True, help="the stack's COMPOSE_PROJECT_NAME")
    parser.add_argument("--seconds", type=float, default=120, help="how long to measure")
    args = parser.parse_args()
    print(json.dumps(measure(args.project, args.seconds), indent=2))  # the sampler alone


if __name__ == "__main__":
    main()
