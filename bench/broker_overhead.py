"""The Docker broker's own cost per call: `python -m bench.broker_overhead [--calls N]`.

The broker (gpuhub/broker/server.py) runs in front of the recording fake daemon of the unit
tests, on loopback, so Docker's own time is not in the figures. For each call gpuhub
makes, it times N calls as the hub sees them (through the broker) and the same calls
straight to the fake daemon, and the broker's own part of each call: its time from
receiving the request to answering, minus the time it waited for the daemon.
Prints one table; exits 1 if the broker's own p95 is 5 ms or more.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gpuhub.broker.server import Broker
from harness.fake_docker import GPUS, LAB_IMAGE, PROJECT, SHARED, BrokerHarness
from harness.hostile_docker import gpuhub_create

TARGET_MS = 5.0
LAB = f"{PROJECT}-lab-bob"
CALLS = {
    "ping": ("GET", "/_ping", None),
    "list labs": ("GET", "/v1.41/containers/json?limit=-1&all=0&size=0&trunc_cmd=0&filters="
                         "%7B%22label%22%3A+%5B%22gpuhub.project%3Dgpuhub%22%5D%7D", None),
    "inspect a lab": ("GET", f"/v1.41/containers/{LAB}/json", None),
    "create a lab": ("POST", f"/v1.41/containers/create?name={LAB}",
                     json.dumps(gpuhub_create(PROJECT, LAB_IMAGE, GPUS[0], SHARED)).encode()),
    "start a lab": ("POST", f"/v1.41/containers/{LAB}/start", None),
}


class TimedBroker(Broker):
    """The broker, with its wait for the daemon measured per request."""

    own_ms: list[float] = []

    async def handle(self, request):
        self._waited = 0.0
        started = time.perf_counter()
        answer = await super().handle(request)
        self.own_ms.append((time.perf_counter() - started - self._waited) * 1000)
        return answer

    async def docker(self, method, path, body=None):
        started = time.perf_counter()
        try:
            return await super().docker(method, path, body)
        finally:
            self._waited += time.perf_counter() - started


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("docker", timeout=30)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self._path)


def timed(conn, method: str, target: str, body) -> float:
    started = time.perf_counter()
    conn.request(method, target, body=body, headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    if answer.status >= 400:
        raise RuntimeError(f"{method} {target} -> {answer.status}")
    return (time.perf_counter() - started) * 1000


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="calls of each kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, BrokerHarness(Path(tmp), broker_class=TimedBroker) as harness:
        broker_ms: dict[str, list[float]] = {}
        direct_ms: dict[str, list[float]] = {}
        own: dict[str, list[float]] = {}
        through = http.client.HTTPConnection("127.0.0.1", harness.port, timeout=30)
        direct = UnixHTTPConnection(harness.socket)
        for name, (method, target, body) in CALLS.items():
            TimedBroker.own_ms = []
            for _ in range(20):  # warm up
                timed(through, method, target, body)
                timed(direct, method, target, body)
            TimedBroker.own_ms = []
            broker_ms[name] = [timed(through, method, target, body) for _ in range(args.calls)]
            own[name] = list(TimedBroker.own_ms)
            direct_ms[name] = [timed(direct, method, target, body) for _ in range(args.calls)]
    print(f"broker overhead per call, {args.calls} calls each (ms; fake daemon on loopback)")
    print(f"{'call':<15}{'direct p50':>11}{'broker p50':>11}{'broker p95':>11}"
          f"{'own p50':>9}{'own p95':>9}")
    worst = 0.0
    for name in CALLS:
        worst = max(worst, p95(own[name]))
        print(f"{name:<15}{statistics.median(direct_ms[name]):>11.2f}"
              f"{statistics.median(broker_ms[name]):>11.2f}{p95(broker_ms[name]):>11.2f}"
              f"{statistics.median(own[name]):>9.2f}{p95(own[name]):>9.2f}")
    verdict = "met" if worst < TARGET_MS else "NOT met"
    print(f"broker's own p95, worst call: {worst:.2f} ms (target < {TARGET_MS:.0f} ms: {verdict})")
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
