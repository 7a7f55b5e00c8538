"""Where a storm's hub API tail comes from: the hub's services against Docker's own work.

A control, like ``bench.bare_storm``: it changes the machine, not gpuhub. On cgroup v1, a
cgroup at the root competes for the CPU as one against each busy process in the root cgroup
(dockerd, containerd, the containers' shims, runc) and against the labs' parent as a whole.
The hub, proxy and broker run under a parent of their own that lab-memory keeps at 16 times
the default weight (``gpuhub-<project>-services``, ``cpu.shares`` 16384); under Docker's
default parent (``/docker``, 1024) they waited behind Docker's processes while labs started.

This starts one gpuhub stack (``--setting`` as ``bench.run``'s; default
LAB_START_CONCURRENCY=0, every lab boots at once), then runs storms of N users, alternating
the services' parent between the weight lab-memory keeps and ``--shares`` (default 1024,
Docker's default). lab-memory puts its weight back every 5 s, so during a storm at
``--shares`` this control writes it again every 0.1 s: for up to 0.1 s in 5 s those storms
run at the kept weight. For each storm: p50 and p95 of the starts, the hub API probe's p95
(``bench.run``'s probe), and that p95 over the requests sent before the storm's last lab
container started and over those sent after.

    python -m bench.engine_priority [--users 20] [--repeat 3] [--shares 1024]

Root only, nothing else running (one Docker job at a time). Results go to
artifacts/bench/engine-priority-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import threading
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from bench import report, trace
from bench.hostcpu import EngineCpu
from bench.probes import address, docker_client
from bench.run import _setting
from bench.spawns import Round, storm
from gpuhub.core import names
from gpuhub.labfirewall.labmemory import Services
from harness.hub import HubUser
from harness.stack import Stack, build_images_once

CPU = Path("/sys/fs/cgroup/cpu")
KEPT = Services("", "cgroupfs", "1").weight  # what lab-memory keeps on cgroup v1
OUT = Path("artifacts/bench")
TIMEOUT = 300
REWRITE = 0.1  # s between this control's writes while it holds another weight


@contextmanager
def held(shares_file: Path, shares: int):
    """Hold ``shares_file`` at ``shares`` against lab-memory (which writes it back every 5 s)
    until the block ends; then leave it to lab-memory. ``shares`` == KEPT: nothing to do."""
    if shares == KEPT:
        yield
        return
    done = threading.Event()

    def hold():
        while not done.is_set():
            shares_file.write_text(str(shares))
            done.wait(REWRITE)

    writer = threading.Thread(target=hold, daemon=True)
    writer.start()
    try:
        yield
    finally:
        done.set()
        writer.join()
        shares_file.write_text(str(KEPT))


def split_at_last_start(r: Round) -> dict:
    """The probe's p95 (ms) before and after the storm's last lab container started."""
    starts = [t.started for t in r.traces if t.started is not None]
    if not starts or not r.hub_api_samples:
        return {"during_starts_p95_ms": None, "after_starts_p95_ms": None}
    last = max(starts)
    before = [lat for sent, lat in r.hub_api_samples if sent <= last]
    after = [lat for sent, lat in r.hub_api_samples if sent > last]
    return {"last_start_s": round(last - min(t.requested for t in r.traces), 2),
            "during_starts_p95_ms": report.ms(report.percentile(before, 95)), "after_starts_p95_ms": report.ms(report.percentile(after, 95))}


def figures(shares: int, r: Round) -> dict:
    s = report.summary(r.seconds)
    return {"services_cpu_shares": shares, "n": r.n, "p50": s["p50"], "p95": s["p95"],
            "hub_api_p95_ms": report.ms(report.percentile(r.hub_api_latencies, 95)),
            "hub_api_requests": len(r.hub_api_latencies), **split_at_last_start(r),
            "errors": r.errors}


def table(rows: list[dict]) -> str:
    def f(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"
    lines = ["| services' cpu.shares | N | p50 s | p95 s | hub API p95 ms | before the last "
             "lab started | after |", "|---|---|---|---|---|---|---|"]
    for x in rows:
        lines.append(f"| {x['services_cpu_shares']} | {x['n']} | {f(x['p50'])} | {f(x['p95'])} "
                     f"| {f(x['hub_api_p95_ms'], 0)} | {f(x['during_starts_p95_ms'], 0)} "
                     f"| {f(x['after_starts_p95_ms'], 0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_priority",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3, help="storms of each weight")
    parser.add_argument("--shares", type=int, default=1024,
                        help="the services' cpu.shares for every other storm (default 1024)")
    parser.add_argument("--setting", action="append", type=_setting, metavar="NAME=VALUE",
                        default=[], help="a gpuhub setting (default LAB_START_CONCURRENCY=0)")
    args = parser.parse_args(argv)
    if not (CPU / "docker" / "cpu.shares").exists():
        print(f"error: no {CPU}/docker: this control needs cgroup v1 and Docker's cgroupfs "
              "driver", file=sys.stderr)
        return 1
    settings = {"LAB_START_CONCURRENCY": "0", **dict(args.setting)}
    project = f"gpuhubbench-{secrets.token_hex(3)}"
    shares_file = CPU / names.services_cgroup_parent(project, "cgroupfs").strip("/") / "cpu.shares"
    workdir = Path(tempfile.mkdtemp(prefix="gpuhubbench-"))
    build_images_once(workdir)  # this checkout's services, not whatever images are tagged
    stack = Stack.create(workdir, COMPOSE_PROJECT_NAME=project, **settings)
    client, engine, rows = docker_client(), EngineCpu(), []
    try:
        stack.up("--no-build")
        passwords = {f"bench{i}": secrets.token_urlsafe(16) for i in range(1, args.users + 1)}
        stack.add_users(passwords)
        users = [HubUser.signed_in(stack.url, name, pw) for name, pw in passwords.items()]
        hub = stack.compose("ps", "-q", "hub", check=True).stdout.strip()
        services = stack.compose("ps", "-q", check=True).stdout.split()
        api_base = address(client, stack.compose("ps", "-q", "proxy", check=True).stdout.strip(),
                           8000)
        if shares_file.read_text().strip() != str(KEPT):
            raise SystemExit(f"error: {shares_file} is not at {KEPT}: is lab-memory running?")
        for _ in range(args.repeat):
            for shares in (args.shares, KEPT):
                with held(shares_file, shares):
                    r = storm(users, {"profile": "cpu"}, client=client, hub_container=hub,
                              service_containers=services, lab_container=stack.lab_container,
                              timeout=TIMEOUT, engine=engine, api_base=api_base)
                trace.add_docker_steps(r.traces, r.docker_events,
                                       {t.user: stack.lab_container(t.user) for t in r.traces})
                rows.append(figures(shares, r))
                print(f"storm {len(rows)}: services' cpu.shares {shares}: hub API p95 "
                      f"{rows[-1]['hub_api_p95_ms']} ms", flush=True)
    finally:
        stack.teardown()
    print(table(rows))
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"engine-priority-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"settings": settings, "storms": rows}, indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
