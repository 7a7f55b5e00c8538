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
        "seconds": [round(s, 3) for s in r.seconds],
        **summary(r.seconds),
        "errors": r.errors,
        "hub_api": {"requests": len(r.hub_api_latencies), "failures": r.hub_api_failures,
                    "p50_ms": _ms(percentile(r.hub_api_latencies, 50)),
                    "p95_ms": _ms(percentile(r.hub_api_latencies, 95)),
                    "max_ms": _ms(max(r.hub_api_latencies) if r.hub_api_latencies else None)},
        "hub_memory": {"peak_working_set_mib": round(r.hub_peak_working_set / MIB, 1),
                       "cgroup_max_usage_mib": round(r.hub_max_usage / MIB, 1)},
        "lab_cpu_seconds": [round(s, 3) for s in r.lab_cpu_seconds],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def cpu_bound_limit(counts: list[int], cpu_one: float | None, cores: int) -> list[dict]:
    """If every lab start needed ``cpu_one`` CPU-seconds and nothing else, N starts on
    ``cores`` cores could not all be done sooner than N x cpu_one / cores."""
    if cpu_one is None:
        return []
    return [{"n": n, "seconds": round(n * cpu_one / cores, 2)} for n in counts]


def _f(value, digits: int = 2, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def _ratio(a, b) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def markdown(results: dict) -> str:
    floor = results["floor"]
    hubs = results["hubs"]
    head = ("| run | N | p50 s | p95 s | max s | p50 / floor | p95 / floor | p50 / stock "
            "| p95 / stock | hub API p95 ms | hub peak MiB |")
    rows = [head, "|" + "---|" * 11]
    rows.append(f"| floor (`docker run`, {floor['count']} reps) | 1 | {_f(floor['p50'])} "
                f"| {_f(floor['p95'])} | {_f(floor['max'])} | 1.00x | 1.00x | - | - | - | - |")
    counts = sorted({r["n"] for hub in hubs.values() for r in hub["rounds"]})
    for n in counts:
        stock = _round(hubs.get("stock"), n)
        for name in ("gpuhub", "stock"):
            r = _round(hubs.get(name), n)
            if r is None:
                continue
            failed = f" ({len(r['errors'])} failed)" if r["errors"] else ""
            rows.append(
                f"| {name}{failed} | {n} | {_f(r['p50'])} | {_f(r['p95'])} | {_f(r['max'])} "
                f"| {_ratio(r['p50'], floor['p50'])} | {_ratio(r['p95'], floor['p50'])} "
                f"| {_ratio(r['p50'], stock and stock['p50'])} "
                f"| {_ratio(r['p95'], stock and stock['p95'])} "
                f"| {_f(r['hub_api']['p95_ms'], 0)} "
                f"| {_f(r['hub_memory']['peak_working_set_mib'], 0)} |")
    m = results["machine"]
    lines = ["# gpuhub spawn latency", "",
             f"{results['started']}; {m['cores']} cores, {m['memory_gib']} GiB, Docker "
             f"{m['docker']}, Compose {m['compose']}, kernel {m['kernel']}; "
             f"lab image `{results['config']['lab_image']}`.", "",
             *rows, "",
             "Latency: from the request (`docker run`, or `POST /hub/api/users/<name>/server`) "
             "until the lab answers `/api` with 200 (through the proxy for the hubs). The floor "
             "ratios divide by the floor's p50. Hub API: `GET /hub/api/users/<name>` every 100 ms "
             "during the storm. Hub peak: highest sampled working set of the hub container.", ""]
    others = results.get("other_containers") or {}
    busy = sorted(set(others.get("at_start", [])) | set(others.get("at_end", [])))
    if busy:
        lines += [f"**Not a quiet machine**: {len(busy)} other container(s) ran during this "
                  f"benchmark ({', '.join(busy[:8])}{', ...' if len(busy) > 8 else ''}); "
                  "treat the numbers as noisy.", ""]
    limit = results.get("cpu_bound_limit") or []
    if limit:
        cpu = results["lab_cpu_seconds_at_ready"]
        lines += [f"CPU-bound limit (N x {cpu['floor_p50']:.2f} CPU-s per lab start at ready / "
                  f"{m['cores']} cores): " +
                  ", ".join(f"N={x['n']}: {x['seconds']:.1f} s" for x in limit) +
                  (f"; a hub-spawned lab used {cpu['gpuhub_p50']:.2f} CPU-s."
                   if cpu.get("gpuhub_p50") is not None else ""), ""]
    timings = results["timings"]
    lines += ["| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {_f(v)} |" for k, v in timings.items()]
    return "\n".join(lines) + "\n"


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
    limit = results.get("cpu_bound_limit") or []
    if limit:
        ax.plot([x["n"] for x in limit], [x["seconds"] for x in limit], "x-.", color="tab:red",
                alpha=0.6, label="CPU-bound limit (N x CPU-s / cores)")
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
    return text
