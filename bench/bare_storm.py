"""Storms with no hub: N bare ``docker run``s of the lab image, all at once or K at a time.

The control for "turns or all at once" (docs/explanation/benchmark.md): what booting labs
side by side costs on this machine when no hub takes part. Every container runs the floor's
command (plain JupyterLab, as ``bench.run``'s floor) and is timed from the storm's start until
it answers ``/api`` at its own address (no published port, so no userland proxy). Each lab's
CPU is read once every lab answered, as in the hubs' storms; the engine's (dockerd,
containerd, the labs' shims) over the same window, where this machine's /proc shows it.

    python -m bench.bare_storm [--users 20] [--turns 2,20] [--repeat 2] [--image gpuhub-lab:test]

Turns alternate within each repetition, so a machine that drifts weighs on each alike.
Figures are printed as a table and written to artifacts/bench/bare-storms-<time>.json.
Nothing else may run on the machine meanwhile (one Docker job at a time).
"""

from __future__ import annotations

import argparse
import json
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import requests

from bench import report
from bench.hostcpu import EngineCpu
from bench.probes import address, cpu_seconds, docker_client
from bench.spawns import FLOOR_COMMAND
from harness.wait import wait_until

LABEL = "gpuhubbench.bare"
PORT = 8888
TIMEOUT = 300
# Every 50 ms per lab: twenty labs polled every 20 ms (the floor's rate) would be a thousand
# requests a second on the cores the labs boot on.
POLL = 0.05
OUT = Path("artifacts/bench")


@dataclass
class BareStorm:
    n: int
    turns: int  # at most this many containers are started and not yet answering
    seconds: list[float] = field(default_factory=list)  # from the storm's start, per lab
    lab_cpu_seconds: list[float] = field(default_factory=list)
    engine_cpu_seconds: float | None = None
    window_seconds: float = 0.0

    def figures(self) -> dict:
        s = report.summary(self.seconds)
        cpu = report.summary(self.lab_cpu_seconds)
        return {"n": self.n, "turns": self.turns, "p50": s["p50"], "p95": s["p95"],
                "last": s["max"], "p95_over_p50": s["p95"] / s["p50"] if s["p50"] else None,
                "lab_cpu_per_boot": (sum(self.lab_cpu_seconds) / len(self.lab_cpu_seconds)
                                     if self.lab_cpu_seconds else None),
                "lab_cpu_min": min(self.lab_cpu_seconds, default=None), "lab_cpu_max": cpu["max"],
                "engine_cpu_per_start": (None if self.engine_cpu_seconds is None
                                         else self.engine_cpu_seconds / self.n)}


def _answers(url: str) -> bool:
    return requests.get(url, timeout=2).ok


def _start_and_wait(client, image: str, name: str, label: str, slots: threading.Semaphore,
                    started: float) -> tuple[float, str]:
    with slots:  # released when this lab answers: the next one starts then
        container_id = subprocess.run(
            ["docker", "run", "-d", "--rm", "--name", name, "--label", label, image,
             *FLOOR_COMMAND], check=True, capture_output=True, text=True).stdout.strip()
        base = address(client, container_id, PORT)
        wait_until(lambda: _answers(f"{base}/api"), timeout=TIMEOUT, interval=POLL,
                   what=f"{name} to answer /api")
        return time.monotonic() - started, container_id


def storm(client, image: str, n: int, turns: int, engine: EngineCpu) -> BareStorm:
    """Start ``n`` labs, ``turns`` at a time; time each; take their CPU; remove them."""
    run = secrets.token_hex(3)
    names = [f"gpuhubbench-bare-{run}-{i}" for i in range(n)]
    slots = threading.Semaphore(turns)
    result = BareStorm(n=n, turns=turns)
    try:
        engine_before = engine.daemons()
        started = time.monotonic()
        with ThreadPoolExecutor(n) as pool:
            done = [f.result() for f in [pool.submit(_start_and_wait, client, image, name,
                                                     f"{LABEL}={run}", slots, started)
                                         for name in names]]
        result.window_seconds = time.monotonic() - started
        engine_after = engine.daemons()
        ids = [container_id for _, container_id in done]
        result.seconds = [seconds for seconds, _ in done]
        result.lab_cpu_seconds = [cpu_seconds(client, container_id) for container_id in ids]
        if engine_before is not None and engine_after is not None:
            result.engine_cpu_seconds = engine_after - engine_before + engine.shims(ids)
    finally:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
    return result


def table(storms: list[BareStorm]) -> str:
    def f(value, digits=2, suffix=""):
        return "-" if value is None else f"{value:.{digits}f}{suffix}"

    lines = ["| N | at a time | p50 s | p95 s | last s | p95 / p50 | lab CPU-s per boot (min-max) "
             "| engine CPU-s per start |", "|---|---|---|---|---|---|---|---|"]
    for s in storms:
        x = s.figures()
        lines.append(f"| {x['n']} | {x['turns']} | {f(x['p50'])} | {f(x['p95'])} | {f(x['last'])} "
                     f"| {f(x['p95_over_p50'], suffix='x')} | {f(x['lab_cpu_per_boot'], 3)} "
                     f"({f(x['lab_cpu_min'], 3)}-{f(x['lab_cpu_max'], 3)}) "
                     f"| {f(x['engine_cpu_per_start'], 3)} |")
    return "\n".join(lines)


def _counts(raw: str) -> list[int]:
    counts = [int(x) for x in raw.split(",") if x.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: give positive whole numbers, e.g. 2,20")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_storm", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20, help="labs per storm (default 20)")
    parser.add_argument("--turns", type=_counts, default=[2, 20],
                        help="how many start at a time, one storm each (default 2,20)")
    parser.add_argument("--repeat", type=int, default=2, help="storms of each kind (default 2)")
    parser.add_argument("--image", default="gpuhub-lab:test",
                        help="the lab image (default gpuhub-lab:test, as `nox -s bench` builds it)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.users < 1 or args.repeat < 1:
        parser.error("--users and --repeat must be at least 1")
    client = docker_client()
    client.images.get(args.image)  # fails at once, naming the image, if it is missing
    engine = EngineCpu()
    storms = []
    for i in range(args.repeat):
        for turns in args.turns:
            print(f"storm {i + 1}/{args.repeat}: {args.users} labs, {turns} at a time", flush=True)
            storms.append(storm(client, args.image, args.users, min(turns, args.users), engine))
            time.sleep(3)  # the removed containers' cleanup is not the next storm's
    print(table(storms))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"bare-storms-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"argv": argv, "image": args.image,
                                "storms": [asdict(s) | {"figures": s.figures()} for s in storms]},
                               indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
