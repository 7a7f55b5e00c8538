"""Turn the measurements into results.json, results.md (the table) and latency.png."""

from __future__ import annotations

import json
from pathlib import Path

MIB = 1024 * 1024


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolation percentile (numpy's default); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: list[float]) -> dict:
    return {"count": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values) if values else None}


def summarize_round(r) -> dict:
    return {
        "n": r.n,
        "reps": r.reps,
        "seconds": [round(s, 3) for s in r.seconds],
        **summary(r.seconds),
        "errors": r.errors,
        "hub_api": {"requests": len(r.hub_api_latencies), "failures": r.hub_api_failures,
                    "p50_ms": ms(percentile(r.hub_api_latencies, 50)),
                    "p95_ms": ms(percentile(r.hub_api_latencies, 95)),
                    "max_ms": ms(max(r.hub_api_latencies) if r.hub_api_latencies else None),
                    # The hub's own time for the same requests (its request log), ms.
                    "hub_own_requests": len(r.hub_api_own_ms),
                    "hub_own_p95_ms": (round(percentile(r.hub_api_own_ms, 95), 1)
                                       if r.hub_api_own_ms else None),
                    # Each request: when it was sent (s after the storm's first request)
                    # and how long it took (ms), for the trace.
                    "samples": api_samples(r)},
        "hub_memory": {"peak_working_set_mib": round(r.hub_peak_working_set / MIB, 1),
                       "cgroup_max_usage_mib": round(r.hub_max_usage / MIB, 1)},
        "lab_cpu_seconds": [round(s, 3) for s in r.lab_cpu_seconds],
        "cpu": cpu_breakdown(r),
        "hub_cpu_by_service": {k: round(v, 3) for k, v in sorted(r.hub_cpu_by_service.items())},
    }


def api_samples(r) -> list[list[float]]:
    """The hub API probe's requests of a storm: [seconds after its first request, ms]."""
    if not r.hub_api_samples:
        return []
    first = min([t.requested for t in r.traces] or [r.hub_api_samples[0][0]])
    return [[round(sent - first, 3), round(latency * 1000, 1)]
            for sent, latency in r.hub_api_samples]


def realistic_limit(r: dict, cores: int) -> float | None:
    """How soon N starts can all be done with what this hub's starts really cost: N x (lab +
    engine + hub CPU-seconds per start, as measured in the storm) / cores."""
    per = (r.get("cpu") or {}).get("per_start")
    if not per or per.get("engine") is None:
        return None
    return r["n"] * (per["lab"] + per["hub"] + per["engine"]) / cores


def cpu_breakdown(r) -> dict:
    """CPU-seconds spent from the first request until every lab answered: per start by the
    labs, the hub's containers and the Docker engine, and by everything else on the machine
    (this benchmark's own client, and whatever else ran)."""
    if not r.window_seconds or not r.seconds:
        return {}
    labs = sum(r.lab_cpu_seconds)
    engine = r.engine_cpu_seconds
    starts = r.n * r.reps
    other = r.machine_busy_seconds - labs - r.hub_cpu_seconds - (engine or 0.0)
    return {"window_s": round(r.window_seconds, 2),
            "machine_busy": round(r.machine_busy_seconds, 2),
            "labs": round(labs, 2), "hub": round(r.hub_cpu_seconds, 2),
            "engine": None if engine is None else round(engine, 2),
            "other": None if engine is None else round(other, 2),
            "per_start": {"lab": round(labs / starts, 3), "hub": round(r.hub_cpu_seconds / starts, 3),
                          "engine": None if engine is None else round(engine / starts, 3)}}


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def cpu_bound_limit(counts: list[int], floor_cpu: dict, cores: int) -> list[dict]:
    """N bare starts on ``cores`` cores cannot all be done sooner than N x (CPU of one start)
    / cores. One start costs the lab's own CPU until it answers, and the Docker engine's
    (dockerd, containerd, shim and runc: create, network, mounts, start), which every
    start pays, the floor's too; both are the floor's medians."""
    lab, engine = floor_cpu.get("lab_p50"), floor_cpu.get("engine_p50")
    if lab is None:
        return []
    one = lab + (engine or 0.0)
    return [{"n": n, "seconds": round(n * one / cores, 2), "cpu_seconds_per_start": round(one, 3),
             "lab_cpu_seconds": round(lab, 3),
             "engine_cpu_seconds": None if engine is None else round(engine, 3)}
            for n in counts]


def _f(value, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _own(api: dict) -> str:
    """`` (n)``: the hub's own p95 for the probe's requests, where its log showed them."""
    own = api.get("hub_own_p95_ms")
    return "" if own is None else f" ({own:.0f})"


def _ratio(a, b) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def lab_server(results: dict) -> str:
    """The lab image's command, which both hubs start (jupyterhub-singleuser in older runs)."""
    command = (results.get("config") or {}).get("lab_command") or ["jupyterhub-singleuser"]
    return " ".join(command)


def markdown(results: dict) -> str:
    floor = results["floor"]
    hubs = results["hubs"]
    cores = results["machine"]["cores"]
    head = ("| run | N | p50 s | p95 s | max s | p95 / p50 | realistic limit s | p95 / limit "
            "| p50 / floor | p95 / floor | p50 / stock | p95 / stock | hub API p95 ms "
            "| hub peak MiB |")
    rows = [head, "|" + "---|" * 14]
    rows.append(f"| floor (`docker run`, {floor['count']} reps) | 1 | {_f(floor['p50'])} "
                f"| {_f(floor['p95'])} | {_f(floor['max'])} | - | - | - | 1.00x | 1.00x | - | - "
                "| - | - |")
    single = results.get("singleuser_floor") or {}
    if single.get("count"):
        rows.append(f"| `{lab_server(results)}` (`docker run`, hub API stubbed, {single['count']} reps) "
                    f"| 1 | {_f(single['p50'])} | {_f(single['p95'])} | {_f(single['max'])} "
                    f"| - | - | - | {_ratio(single['p50'], floor['p50'])} "
                    f"| {_ratio(single['p95'], floor['p50'])} | - | - | - | - |")
    counts = sorted({r["n"] for hub in hubs.values() for r in hub["rounds"]})
    for n in counts:
        stock = _round(hubs.get("stock"), n)
        for name in ("gpuhub", "stock"):
            r = _round(hubs.get(name), n)
            if r is None:
                continue
            failed = f" ({len(r['errors'])} failed)" if r["errors"] else ""
            reps = f" ({r['reps']} reps)" if r.get("reps", 1) > 1 else ""
            limit = realistic_limit(r, cores)
            rows.append(
                f"| {name}{reps}{failed} | {n} | {_f(r['p50'])} | {_f(r['p95'])} | {_f(r['max'])} "
                f"| {_ratio(r['p95'], r['p50'])} | {_f(limit)} | {_ratio(r['p95'], limit)} "
                f"| {_ratio(r['p50'], floor['p50'])} | {_ratio(r['p95'], floor['p50'])} "
                f"| {_ratio(r['p50'], stock and stock['p50'])} "
                f"| {_ratio(r['p95'], stock and stock['p95'])} "
                f"| {_f(r['hub_api']['p95_ms'], 0)}{_own(r['hub_api'])} "
                f"| {_f(r['hub_memory']['peak_working_set_mib'], 0)} |")
    m = results["machine"]
    lines = ["# gpuhub spawn latency", "",
             f"{results['started']}; {m['cores']} cores, {m['memory_gib']} GiB, Docker "
             f"{m['docker']}, Compose {m['compose']}, kernel {m['kernel']}; "
             f"lab image `{results['config']['lab_image']}`"
             + ("; gpuhub settings changed for this run: " + ", ".join(
                 f"`{k}={v}`" for k, v in results["config"]["gpuhub_settings"].items())
                if results["config"].get("gpuhub_settings") else "") + ".", "",
             *rows, "",
             "Latency: from the request (`docker run`, or `POST /hub/api/users/<name>/server`) "
             "until the lab answers `/api` with 200 (through the proxy for the hubs). The floor "
             "ratios divide by the floor's p50. Realistic limit: N x (lab + engine + hub "
             "CPU-seconds per start, as this hub's storm spent them) / cores, the soonest all N "
             "can be done. Hub API: `GET /hub/api/users/<name>` every 100 ms "
             "during the storm, as a client of its own (a separate process) saw it, sent "
             "to the proxy's container address as a request from another machine arrives "
             "(not through Docker's userland proxy on 127.0.0.1); in brackets, the hub's own "
             "time for those requests (its request log, from the moment it read each one): "
             "the rest was spent on the way (the proxy, the machine's scheduler, the "
             "client). Hub peak: highest sampled working set of the hub container. "
             "Both hubs ran in this one run, on this machine, one after the other.", ""]
    others = results.get("other_containers") or {}
    busy = sorted(set(others.get("at_start", [])) | set(others.get("at_end", [])))
    if busy:
        lines += [f"**Not a quiet machine**: {len(busy)} other container(s) ran during this "
                  f"benchmark ({', '.join(busy[:8])}{', ...' if len(busy) > 8 else ''}); "
                  "treat the numbers as noisy.", ""]
    load = results.get("load_average")
    if load:
        lines += [f"Load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load['at_start'])} "
                  f"at the start, {', '.join(f'{x:.2f}' for x in load['at_end'])} at the end.", ""]
    limit = results.get("cpu_bound_limit") or []
    if limit:
        one = limit[0]
        engine = ("not measured (the Docker engine is not on this machine)"
                  if one["engine_cpu_seconds"] is None
                  else f"{one['engine_cpu_seconds']:.2f} CPU-s of the Docker engine")
        lines += [f"CPU-bound limit: N x {one['cpu_seconds_per_start']:.2f} CPU-s per start / "
                  f"{m['cores']} cores (a bare start: {one['lab_cpu_seconds']:.2f} CPU-s of the "
                  f"lab until it answers, {engine}): " +
                  ", ".join(f"N={x['n']}: {x['seconds']:.1f} s" for x in limit) + ".", ""]
    single_cpu = (results.get("cpu_seconds_per_start") or {}).get("singleuser") or {}
    if single_cpu.get("lab_p50") is not None:
        lines += [f"`{lab_server(results)}` (the lab image's command, which both hubs start), "
                  f"bare: {single_cpu['lab_p50']:.2f} CPU-s of the lab until it answers.", ""]
    lines += cpu_table(results)
    lines += service_table(results)
    timings = results["timings"]
    lines += ["| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {_f(v)} |" for k, v in timings.items()]
    return "\n".join(lines) + "\n"


DISTURBED = 0.10  # share of the machine busy with other work that makes a figure noisy


def cpu_table(results: dict) -> list[str]:
    """Where the CPU went: in the bare starts (medians) and in each storm."""
    cores = results["machine"]["cores"]
    rows, disturbed = [], False
    starts = results.get("cpu_seconds_per_start") or {}
    for name, key, timing in (("floor", "floor", "floor"),
                              (f"`{lab_server(results)}`", "singleuser", "singleuser_floor")):
        cpu = starts.get(key) or {}
        if cpu.get("lab_p50") is None:
            continue
        other = max(cpu.get("other_share") or [0.0])
        disturbed |= other > DISTURBED
        rows.append(f"| {name} (median) | 1 | {_f(results[timing]['p50'], 1)} | - "
                    f"| {cpu['lab_p50']:.2f} | - | {_f(cpu['engine_p50'])} "
                    f"| {other:.0%}{' *' if other > DISTURBED else ''} (worst rep) |")
    for name, hub in results["hubs"].items():
        for r in hub["rounds"]:
            c = r.get("cpu") or {}
            if not c:
                continue
            share = None if c["other"] is None else c["other"] / (c["window_s"] * cores)
            disturbed |= share is not None and share > DISTURBED
            rows.append(f"| {name} | {r['n']} | {c['window_s']:.1f} | "
                        f"{c['machine_busy'] / (c['window_s'] * cores):.0%} | "
                        f"{c['per_start']['lab']:.2f} | {c['per_start']['hub']:.2f} | "
                        f"{_f(c['per_start']['engine'])} | "
                        + ("-" if share is None else
                           f"{share:.0%}{' *' if share > DISTURBED else ''}") + " |")
    if not rows:
        return []
    lines = ["Where the CPU went until every lab answered, in CPU-seconds per lab start (hub: "
             "the hub's containers, all services of its stack; engine: dockerd, containerd, the labs' shims; other: "
             "everything else on the machine, this benchmark's own client included, as a "
             "share of all cores):", "",
             "| run | N | seconds | machine busy | lab | hub | engine | other |",
             "|---|---|---|---|---|---|---|---|", *rows, ""]
    if disturbed:
        lines += [f"\\* more than {DISTURBED:.0%} of the machine was busy with other work: "
                  "that figure is noisy.", ""]
    return lines


def service_table(results: dict) -> list[str]:
    """Each service of each hub's stack: CPU-seconds per minute at rest, and per start in
    each storm."""
    idle = results.get("idle_cpu_seconds_per_minute") or {}
    lines = []
    for name, hub in results["hubs"].items():
        rounds = [r for r in hub["rounds"] if r.get("hub_cpu_by_service")]
        services = sorted(set(idle.get(name, {})) | {s for r in rounds
                                                     for s in r["hub_cpu_by_service"]})
        if not services:
            continue
        head = "| service | at rest, CPU-s per minute | " + " | ".join(
            f"N={r['n']}, CPU-s per start" for r in rounds) + " |"
        lines += [f"{name}'s stack, service by service:", "", head,
                  "|" + "---|" * (2 + len(rounds))]
        for service in services:
            per_start = [r["hub_cpu_by_service"].get(service) for r in rounds]
            lines.append(f"| {service} | {_f(idle.get(name, {}).get(service), 3)} | " + " | ".join(
                _f(None if v is None else v / (r["n"] * r.get("reps", 1)), 3)
                for v, r in zip(per_start, rounds)) + " |")
        total = (sum(v for k, v in idle[name].items() if k not in ("docker engine", "machine"))
                 if idle.get(name) else None)
        lines += [f"| all of the stack's services | {_f(total, 3)} | " + " | ".join(
            _f(sum(r["hub_cpu_by_service"].values()) / (r["n"] * r.get("reps", 1)), 3)
            for r in rounds) + " |", ""]
    return lines


def _round(hub: dict | None, n: int) -> dict | None:
    if not hub:
        return None
    return next((r for r in hub["rounds"] if r["n"] == n), None)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"gpuhub": "tab:blue", "stock": "tab:orange"}
    for name, hub in results["hubs"].items():
        rounds = [r for r in hub["rounds"] if r["p50"] is not None]
        ns = [r["n"] for r in rounds]
        ax.plot(ns, [r["p50"] for r in rounds], "o-", color=styles.get(name), label=f"{name} p50")
        ax.plot(ns, [r["p95"] for r in rounds], "s--", color=styles.get(name), label=f"{name} p95")
    if results["floor"]["p50"] is not None:
        ax.axhline(results["floor"]["p50"], color="gray", linestyle=":",
                   label="floor p50 (docker run)")
    single = results.get("singleuser_floor") or {}
    if single.get("p50") is not None:
        ax.axhline(single["p50"], color="gray", linestyle="--", alpha=0.6,
                   label=f"{lab_server(results)} p50 (docker run)")
    limit = results.get("cpu_bound_limit") or []
    if limit:
        ax.plot([x["n"] for x in limit], [x["seconds"] for x in limit], "x-.", color="tab:red",
                alpha=0.6, label="CPU-bound limit (N x floor CPU-s / cores)")
    ax.set_xticks(sorted({r["n"] for hub in results["hubs"].values() for r in hub["rounds"]}))
    ax.set_xlabel("labs started at once (N)")
    ax.set_ylabel("seconds until the lab answers /api")
    ax.set_title(f"Spawn latency, {results['machine']['cores']} cores")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(results: dict, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (folder / "results.md").write_text(text)
    plot(results, folder / "latency.png")
    from bench import trace
    storms = {k: v for k, v in (results.get("traces") or {}).items()
              if not k.endswith(" N=1")}
    trace.plot(storms, folder / "trace.png")
    return text
