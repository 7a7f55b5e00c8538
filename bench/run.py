"""Measure spawn latency: the bare `docker run` floor, gpuhub, and a stock DockerSpawner hub.

    python -m bench.run [--users 1,5,10,20] [--floor-reps 5] [--cold] [--smoke]

(`nox -s bench -- --smoke` runs it in a prepared environment.) Everything runs on this
machine with the same lab image, under compose projects named ``gpuhubbench-<random>-*``,
all removed at the end, also on failure. Results go to ``artifacts/bench/<UTC time>/``:
results.json, results.md (the table, also printed) and latency.png.
"""

from __future__ import annotations

import argparse
import datetime
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import report, trace
from bench.hostcpu import EngineCpu
from bench.probes import address, docker_client
from bench.spawns import (
    Round,
    floor_once,
    idle_cost,
    merge,
    singleuser_command,
    singleuser_env,
    storm,
)
from bench.stockhub import StockHub
from gpuhub.core.settings import DEFAULT_JUPYTERHUB_VERSION, SETTINGS
from harness import ROOT
from harness.hub import HubUser
from harness.stack import Stack, build_images_once

PREFIX = "gpuhubbench-"
SPAWN_TIMEOUT = 180.0


def setting_default(name: str) -> str:
    return next(s.default for s in SETTINGS if s.name == name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1,5,10,20", type=_counts,
                        help="comma-separated numbers of users who start their labs at once "
                             "(default: 1,5,10,20)")
    parser.add_argument("--floor-reps", type=int, default=5,
                        help="how many times to time the bare `docker run` floor, bare "
                             "jupyterhub-singleuser, and each hub's single-user start "
                             "(default: 5)")
    parser.add_argument("--cold", action="store_true",
                        help="also time `invoke build --no-cache` (separate image tags, "
                             "removed afterwards)")
    parser.add_argument("--idle-seconds", type=float, default=60,
                        help="how long to watch each hub's stack at rest, before its storms, "
                             "for its idle CPU cost (default: 60)")
    parser.add_argument("--smoke", action="store_true",
                        help="quick check for CI: 2 users, 2 floor runs, no cold build, 5 s "
                             "at rest")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        type=_setting,
                        help="a gpuhub setting for this run's gpuhub stack, e.g. "
                             "LAB_START_CONCURRENCY=0 (repeatable; recorded in the results)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.users, args.floor_reps, args.cold, args.idle_seconds = [2], 2, False, 5
    if args.floor_reps < 1:
        parser.error("--floor-reps must be at least 1")
    return args


def _counts(raw: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in raw.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a list of numbers such as 1,5,10") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"{raw!r}: give numbers of 1 or more, such as 1,5,10")
    return counts


def _setting(raw: str) -> tuple[str, str]:
    name, sep, value = raw.partition("=")
    if not sep or name not in {s.name for s in SETTINGS}:
        raise argparse.ArgumentTypeError(f"{raw!r}: give NAME=VALUE with a gpuhub setting's "
                                         "name, e.g. LAB_START_CONCURRENCY=0")
    return name, value


def step(message: str) -> None:
    print(f"==> {message}", flush=True)


def machine(client) -> dict:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    compose = subprocess.run(["docker", "compose", "version", "--short"], capture_output=True,
                             text=True).stdout.strip()
    info = client.info()
    return {"cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem_kib / 1024**2, 1),
            "docker": client.version().get("Version"), "compose": compose,
            "kernel": os.uname().release, "cgroup_version": info.get("CgroupVersion"),
            "docker_cpus": info.get("NCPU")}


class Bench:
    """One benchmark run: what it measured so far, and what it must remove at the end."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.run_id = secrets.token_hex(3)
        self.prefix = f"{PREFIX}{self.run_id}"
        self.started = datetime.datetime.now(datetime.UTC)
        self.workdir = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.client = docker_client()
        self.cleanups: list[tuple[str, Callable[[], None]]] = []
        self.timings: dict[str, float] = {}
        self.floor: list = []
        self.singleuser_floor: list = []
        self.engine = EngineCpu()
        self.load_at_start = os.getloadavg()
        self.rounds: dict[str, list[Round]] = {}
        self.traces: dict[str, list[dict]] = {}  # "gpuhub N=10" -> bench.trace.as_json
        self.idle: dict[str, dict[str, float]] = {}  # hub -> service -> CPU-s per minute
        self.diagnostics: list[str] = []  # what a stack said when its starts failed
        self.others_at_start = self.others_running()
        # The product's GPU sampling interval, not the test stacks' faster one: the bench
        # measures what an admin runs.
        self.stack = Stack.create(self.workdir / "gpuhub", COMPOSE_PROJECT_NAME=f"{self.prefix}-gpuhub",
                                  **{"GPU_SAMPLE_INTERVAL": setting_default("GPU_SAMPLE_INTERVAL"),
                                     **dict(args.setting)})
        self.lab_image = self.stack.settings["LAB_IMAGE"]
        self.hub_image = self.stack.settings["HUB_IMAGE"]

    # --- steps -------------------------------------------------------------------
    def others_running(self) -> list[str]:
        """Containers on this engine that are not this run's: they compete for the CPU."""
        return sorted(c.name for c in self.client.containers.list()
                      if not c.name.startswith(self.prefix))

    def build_images(self) -> None:
        # Always: an image left over from another checkout would measure other code.
        images = [self.stack.settings[k] for k in ("HUB_IMAGE", "LAB_IMAGE", "DOCKER_PROXY_IMAGE",
                                                    "LAB_FIREWALL_IMAGE")]
        step(f"invoke build ({', '.join(images)}; cached layers are reused)")
        self.timings["invoke build"] = build_images_once(self.workdir)

    def cold_build(self) -> None:
        tags = {"HUB_IMAGE": f"gpuhubbench-hub:cold-{self.run_id}",
                "LAB_IMAGE": f"gpuhubbench-lab:cold-{self.run_id}",
                "DOCKER_PROXY_IMAGE": f"gpuhubbench-docker-proxy:cold-{self.run_id}",
                "LAB_FIREWALL_IMAGE": f"gpuhubbench-lab-firewall:cold-{self.run_id}"}
        cold = Stack.create(self.workdir / "cold", COMPOSE_PROJECT_NAME=f"{self.prefix}-cold", **tags)
        self.cleanups.append(("cold-build images", lambda: self._remove_images(tags.values())))
        step("timing a cold build: invoke build --no-cache")
        started = time.monotonic()
        cold.invoke("build", "--no-cache", timeout=3600)
        self.timings["invoke build --no-cache (cold)"] = time.monotonic() - started

    def _remove_images(self, tags) -> None:
        for tag in tags:
            subprocess.run(["docker", "image", "rm", tag], capture_output=True)

    def lab_command(self) -> list[str]:
        """The command the lab image starts (both hubs run it; see stock_jupyterhub_config.py)."""
        return list(self.client.images.get(self.lab_image).attrs["Config"]["Cmd"] or [])

    def measure_floor(self) -> None:
        """The floor (plain JupyterLab) and the lab's own server (its command), bare, in turn."""
        label = f"gpuhubbench.run={self.run_id}"
        singleuser = {"command": singleuser_command(self.lab_command()), "path": "/user/bench/api",
                      "env": singleuser_env(self.stack.settings.get("JUPYTERHUB_VERSION",
                                                                     DEFAULT_JUPYTERHUB_VERSION))}
        for i in range(self.args.floor_reps):
            for runs, what, kwargs in ((self.floor, "floor", {}),
                                       (self.singleuser_floor, "singleuser", singleuser)):
                run = floor_once(self.client, self.lab_image, f"{self.prefix}-{what}-{i}", label,
                                 timeout=SPAWN_TIMEOUT, engine=self.engine, **kwargs)
                runs.append(run)
                engine = ("" if run.engine_cpu_seconds is None
                          else f" + {run.engine_cpu_seconds:.2f} engine")
                step(f"{what} {i + 1}/{self.args.floor_reps}: {run.seconds:.2f} s "
                     f"({run.cpu_seconds:.2f} CPU-s lab{engine})")

    def measure_gpuhub(self) -> None:
        stack = self.stack
        self.cleanups.append(("gpuhub stack", stack.teardown))
        step(f"invoke up --no-build (project {stack.project})")
        started = time.monotonic()
        stack.up("--no-build")
        self.timings["invoke up --no-build (warm, fresh project)"] = time.monotonic() - started
        users = []
        for i in range(1, max(self.args.users) + 1):
            name, password = f"bench{i}", secrets.token_urlsafe(16)
            users.append(stack.signed_up(name, password))
        hub = stack.compose("ps", "-q", "hub", check=True).stdout.strip()
        # The hub's CPU is that of every service of the stack: hub, proxy, docker-proxy,
        # lab-firewall (labs are not compose services).
        services = stack.compose("ps", "-q", check=True).stdout.split()
        self.measure_idle("gpuhub", services)
        proxy = stack.compose("ps", "-q", "proxy", check=True).stdout.strip()
        self.rounds["gpuhub"] = self._storms(
            "gpuhub", users, {"profile": "cpu"}, hub, services, stack.lab_container,
            lambda: stack.compose("logs", "--no-color", "hub").stdout,
            address(self.client, proxy, 8000))
        if any(r.errors for r in self.rounds["gpuhub"]):
            # What the stack said, before it is removed: errors.txt then shows why.
            state = stack.compose("ps", "--all").stdout
            self.diagnostics.append(f"gpuhub stack after the failed starts:\n{state}\n"
                                    f"{stack.logs(tail=60)}")
        step("removing the gpuhub stack")
        stack.teardown()

    def measure_stock(self) -> None:
        stock = StockHub(project=f"{self.prefix}-stock", hub_image=self.hub_image,
                         lab_image=self.lab_image, lab_command=self.lab_command())
        self.cleanups.append(("stock hub", lambda: stock.teardown(self.client)))
        step(f"starting the stock DockerSpawner hub (project {stock.project})")
        started = time.monotonic()
        stock.up()
        self.timings["stock hub: compose up until /hub/health"] = time.monotonic() - started
        # allow_all: the first login creates the user, as on a stock deployment.
        users = [HubUser.signed_in(stock.url, f"bench{i}", stock.password)
                 for i in range(1, max(self.args.users) + 1)]
        hub = stock.hub_container()  # configurable-http-proxy runs inside it
        self.measure_idle("stock", [hub])
        self.rounds["stock"] = self._storms("stock", users, {}, hub, [hub], stock.lab_container,
                                            lambda: stock.logs(tail=100000),
                                            address(self.client, hub, 8000))
        step("removing the stock hub")
        stock.teardown(self.client)

    def measure_idle(self, hub: str, services: list[str]) -> None:
        step(f"{hub}: its stack at rest for {self.args.idle_seconds:.0f} s (idle CPU cost)")
        self.idle[hub] = idle_cost(self.client, services, self.args.idle_seconds,
                                   self.engine)

    def _storms(self, hub: str, users: list[HubUser], options: dict, hub_container: str,
                service_containers: list[str], lab_container: Callable[[str], str],
                hub_log: Callable[[], str], api_base: str) -> list[Round]:
        rounds = []
        for n in self.args.users:
            # One user's start is repeated as often as the floor's, for a p50 of its own.
            reps = self.args.floor_reps if n == 1 else 1
            step(f"{hub}: {n} user(s) start their labs at once"
                 + (f", {reps} times" if reps > 1 else ""))
            storms = [storm(users[:n], options, client=self.client,
                            hub_container=hub_container, service_containers=service_containers,
                            lab_container=lab_container, timeout=SPAWN_TIMEOUT,
                            engine=self.engine, api_base=api_base)
                      for _ in range(reps)]
            # Each storm's steps from its own events and log lines (the same user's lab is
            # started once per repetition), then all of them together.
            try:
                log = hub_log()
            except Exception as exc:
                log = ""
                self.diagnostics.append(f"{hub} N={n}: no hub log ({type(exc).__name__}: {exc})")
            for one in storms:
                self._trace(f"{hub} N={n}", one, lab_container, log, users[0].name)
            r = merge(storms)
            if r.traces:
                self.traces[f"{hub} N={n}"] = trace.as_json(r.traces)
            s = report.summary(r.seconds)
            step(f"{hub} N={n}: p50 {s['p50'] or 0:.2f} s, max {s['max'] or 0:.2f} s"
                 + (f", {len(r.errors)} FAILED: {r.errors[0][:300]}" if r.errors else ""))
            rounds.append(r)
        return rounds

    def _trace(self, name: str, r: Round, lab_container: Callable[[str], str],
               log: str, probe_user: str) -> None:
        """Docker's and the hub's side of each start of one storm (bench.trace), and the
        hub's own time for the API probe's requests (``probe_user``'s model)."""
        if not r.traces:
            return
        first = min(t.requested for t in r.traces)
        last = max((t.ready or t.requested) for t in r.traces)
        try:
            trace.add_docker_steps(r.traces, r.docker_events,
                                   {t.user: lab_container(t.user) for t in r.traces})
            trace.add_hub_steps(r.traces, log, first - 1)
            r.hub_api_own_ms = trace.hub_request_times(
                log, f"/hub/api/users/{probe_user}", first, last)
        except Exception as exc:  # the trace is a figure of its own: never fail the run
            self.diagnostics.append(f"{name}: no trace ({type(exc).__name__}: {exc})")

    def teardown(self) -> list[str]:
        problems = []
        for what, cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as exc:
                problems.append(f"could not remove the {what}: {exc}")
        self.cleanups.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return problems

    # --- results -----------------------------------------------------------------
    def results(self, errors: list[str]) -> dict:
        m = machine(self.client)
        hubs = {name: {"rounds": [report.summarize_round(r) for r in rounds]}
                for name, rounds in self.rounds.items()}
        gpuhub_one = next(iter(self.rounds.get("gpuhub", [])), None)
        cpu = {"floor": _cpu_figures(self.floor), "singleuser": _cpu_figures(self.singleuser_floor),
               "gpuhub_p50": (statistics.median(gpuhub_one.lab_cpu_seconds)
                              if gpuhub_one and gpuhub_one.lab_cpu_seconds else None)}
        return {
            "started": self.started.isoformat(timespec="seconds"),
            "argv": sys.argv[1:],
            "config": {"users": self.args.users, "floor_reps": self.args.floor_reps,
                       "smoke": self.args.smoke, "lab_image": self.lab_image,
                       "lab_command": self.lab_command(),
                       "hub_image": self.hub_image, "gpuhub_profile": "cpu",
                       "gpuhub_settings": dict(self.args.setting),
                       "spawn_timeout_s": SPAWN_TIMEOUT},
            "machine": m,
            # Anything else running competed for the same cores: other containers, and the
            # load average (1, 5, 15 min) before and after.
            "other_containers": {"at_start": self.others_at_start,
                                 "at_end": self.others_running()},
            "load_average": {"at_start": [round(x, 2) for x in self.load_at_start],
                             "at_end": [round(x, 2) for x in os.getloadavg()]},
            "timings": {k: round(v, 2) for k, v in self.timings.items()},
            "floor": {**report.summary([f.seconds for f in self.floor]),
                      "seconds": [round(f.seconds, 3) for f in self.floor]},
            "singleuser_floor": {**report.summary([f.seconds for f in self.singleuser_floor]),
                                 "seconds": [round(f.seconds, 3) for f in self.singleuser_floor]},
            "hubs": hubs,
            "cpu_seconds_per_start": cpu,
            "cpu_bound_limit": report.cpu_bound_limit(self.args.users, cpu["floor"], m["cores"]),
            "idle_cpu_seconds_per_minute": self.idle,
            "traces": self.traces,
            "errors": errors,
        }


def _cpu_figures(runs: list) -> dict:
    """Median CPU-seconds of one bare start: the lab's, at ready, and the engine's."""
    lab = [r.cpu_seconds for r in runs]
    engine = [r.engine_cpu_seconds for r in runs if r.engine_cpu_seconds is not None]
    other = [r.other_cpu_seconds for r in runs if r.other_cpu_seconds is not None]
    return {"lab": [round(x, 3) for x in lab], "engine": [round(x, 3) for x in engine],
            "lab_p50": statistics.median(lab) if lab else None,
            "engine_p50": statistics.median(engine) if engine else None,
            # Share of the machine busy with anything else while each start was timed.
            "other_share": [round(o / (r.seconds * os.cpu_count()), 3)
                            for r, o in zip(runs, other)]}


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # nox or CI stopping us must still clean up
    wall = time.monotonic()
    bench = Bench(args)
    errors: list[str] = []
    headline = ""
    try:
        bench.build_images()
        if args.cold:
            bench.cold_build()
        bench.measure_floor()
        bench.measure_gpuhub()
        bench.measure_stock()
    except (Exception, KeyboardInterrupt) as exc:
        errors.append("".join(traceback.format_exception(exc)))
        headline = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
    finally:
        step("removing everything this run created")
        errors += bench.teardown()
    errors += [f"{hub} N={r.n}: {e}" for hub, rounds in bench.rounds.items()
               for r in rounds for e in r.errors]
    errors += bench.diagnostics
    bench.timings["benchmark wall time"] = time.monotonic() - wall
    # The run id keeps two runs started in the same second apart.
    out = ROOT / "artifacts" / "bench" / f"{bench.started:%Y%m%dT%H%M%SZ}-{bench.run_id}"
    results = bench.results(errors)
    print()
    print(report.write(results, out))
    for line in results["cpu_bound_limit"]:
        print(f"CPU-bound limit, N={line['n']}: {line['seconds']:.1f} s "
              f"(N x {line['cpu_seconds_per_start']:.2f} CPU-s / "
              f"{results['machine']['cores']} cores)")
    print(f"results: {out}")
    if errors:
        (out / "errors.txt").write_text("\n\n".join(errors))
        first = headline or errors[0].strip().splitlines()[0][:300]
        print(f"bench: {len(errors)} problem(s), see {out / 'errors.txt'}; first: {first}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
