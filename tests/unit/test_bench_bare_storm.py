"""bench.bare_storm: K at a time means at most K labs started and not yet answering; each is
timed from the storm's start; every container is removed, also when one fails; the figures
and the table say what the storms measured."""

from __future__ import annotations

import argparse
import http.server
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest

from bench import bare_storm
from bench.bare_storm import BareStorm


class _Lab(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class FakeDocker:
    """`docker run` starts a "lab" that answers on loopback after ``boot`` seconds; records
    how many were started and not yet answering at any moment."""

    def __init__(self, boot: float, fail_at: int | None = None):
        self.boot, self.fail_at = boot, fail_at
        self.lock = threading.Lock()
        self.booting = 0
        self.most_booting = 0
        self.runs = 0
        self.removed: list[str] = []
        self.ready_at: dict[str, float] = {}

    def run(self, args, **kwargs):
        if args[:2] == ["docker", "rm"]:
            self.removed.extend(args[3:])
            return subprocess.CompletedProcess(args, 0, "", "")
        name = args[args.index("--name") + 1]
        with self.lock:
            self.runs += 1
            if self.fail_at is not None and self.runs == self.fail_at:
                raise subprocess.CalledProcessError(125, args, "", "no such image")
            self.booting += 1
            self.most_booting = max(self.most_booting, self.booting)
        self.ready_at[name] = time.monotonic() + self.boot
        return subprocess.CompletedProcess(args, 0, name + "\n", "")

    def answered(self, name: str) -> None:
        with self.lock:
            self.booting -= 1


@pytest.fixture
def lab_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Lab)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fake(monkeypatch, docker: FakeDocker, url: str) -> None:
    monkeypatch.setattr(bare_storm.subprocess, "run", docker.run)
    monkeypatch.setattr(bare_storm, "address", lambda client, cid, port: f"{url}/{cid}")
    monkeypatch.setattr(bare_storm, "cpu_seconds", lambda client, cid: 1.0)

    def answers(target: str) -> bool:
        name = target.rsplit("/", 2)[-2]
        if time.monotonic() < docker.ready_at[name]:
            return False
        ok = bare_storm.requests.get(target, timeout=2).ok
        if ok:
            docker.answered(name)
        return ok

    monkeypatch.setattr(bare_storm, "_answers", answers)
    monkeypatch.setattr(bare_storm, "POLL", 0.01)


def engine(cpu: float | None):
    return SimpleNamespace(daemons=lambda: cpu, shims=lambda ids: 0.5)


def test_k_at_a_time_means_at_most_k_booting_and_times_run_from_the_storms_start(
        monkeypatch, lab_server):
    docker = FakeDocker(boot=0.1)
    fake(monkeypatch, docker, lab_server)
    result = bare_storm.storm(None, "lab:test", 6, 2, engine(10.0))
    assert docker.runs == 6 and docker.most_booting == 2
    # Three turns of two: the last lab answered after about three boots, from the start.
    assert len(result.seconds) == 6 and max(result.seconds) >= 0.3 > min(result.seconds)
    assert result.lab_cpu_seconds == [1.0] * 6
    assert result.engine_cpu_seconds == pytest.approx(0.5)  # no daemon CPU moved; the shims'
    assert sorted(docker.removed) == sorted(f"{n}" for n in docker.ready_at)


def test_all_at_once_boots_every_lab_together(monkeypatch, lab_server):
    docker = FakeDocker(boot=0.2)
    fake(monkeypatch, docker, lab_server)
    result = bare_storm.storm(None, "lab:test", 5, 5, engine(None))
    assert docker.most_booting == 5
    assert max(result.seconds) < 0.2 * 3  # together, not in turns
    assert result.engine_cpu_seconds is None  # not measurable: said so, not zero


def test_a_failing_start_fails_the_storm_and_removes_every_container(monkeypatch, lab_server):
    docker = FakeDocker(boot=0.05, fail_at=3)
    fake(monkeypatch, docker, lab_server)
    with pytest.raises(subprocess.CalledProcessError):
        bare_storm.storm(None, "lab:test", 4, 1, engine(1.0))
    assert len(docker.removed) == 4 and all(n.startswith("gpuhubbench-bare-") for n in docker.removed)


def test_figures_and_table():
    s = BareStorm(n=4, turns=2, seconds=[1.0, 2.0, 3.0, 4.0], lab_cpu_seconds=[0.8, 1.0, 1.0, 1.2],
                  engine_cpu_seconds=1.0)
    x = s.figures()
    assert x["p50"] == 2.5 and x["p95"] == pytest.approx(3.85) and x["last"] == 4.0
    assert x["p95_over_p50"] == pytest.approx(3.85 / 2.5)
    assert x["lab_cpu_per_boot"] == pytest.approx(1.0) and x["engine_cpu_per_start"] == 0.25
    rows = bare_storm.table([s, BareStorm(n=1, turns=1, seconds=[1.5], lab_cpu_seconds=[0.9])])
    lines = rows.splitlines()
    assert len(lines) == 4
    assert lines[2] == "| 4 | 2 | 2.50 | 3.85 | 4.00 | 1.54x | 1.000 (0.800-1.200) | 0.250 |"
    assert lines[3].endswith("| - |")


def test_turns_must_be_positive():
    assert bare_storm._counts("2,20") == [2, 20]
    for raw in ("0,2", "", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            bare_storm._counts(raw)
