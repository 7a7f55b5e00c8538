"""The documentation's reference pages, generated from the code so that they cannot drift.

    python -m tools.docsref OUTDIR

Writes one MyST Markdown fragment per reference page into OUTDIR (``docs/conf.py`` runs this
at every build, into ``docs/reference/_generated/``, which the reference pages include):

- ``settings.md``: every setting of :mod:`gpuhub.core.settings`, by group;
- ``tasks.md``: every task of Invoke's collection in ``tasks.py``, with every flag and its help;
- ``metrics.md``: every metric the hub's registry serves (:func:`gpuhub.hub.telemetry.install`
  on an example hub whose board has one of everything), with its type and labels;
- ``profiles.md``: the fields a profile in ``profiles.yaml`` may have (:mod:`gpuhub.core.profiles`);
- ``modules.md``: every module of the ``gpuhub`` package, by runtime, with the first line of
  its docstring;
- ``broker.md``: the Docker calls the broker allows (each example goes through
  :meth:`gpuhub.broker.policy.Policy.plan` at build time) and the create body's allowed keys.

Imports need only invoke, PyYAML and prometheus-client (``docs/requirements.txt``).
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from harness.hostile_docker import gpuhub_create

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("settings", "tasks", "metrics", "profiles", "broker", "modules")


def cell(text: object) -> str:
    """Text for a Markdown table cell: no pipe, no line break, no raw HTML or emphasis
    outside `code` (whose text stays as it is)."""
    parts = str(text).replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = (parts[i].replace("\\", "\\\\").replace("<", "&lt;").replace(">", "&gt;")
                    .replace("*", "\\*"))
    return "`".join(parts).replace("|", "\\|")


# --- settings --------------------------------------------------------------------------

def settings_md() -> str:
    from gpuhub.core.settings import SETTINGS

    out, group = [], None
    for s in SETTINGS:
        if s.group != group:
            group = s.group
            out += ["", f"## {group}", "", "| setting | default | meaning |", "| --- | --- | --- |"]
        default = f"`{s.default}`" if s.default else "(empty)"
        out.append(f"| `{s.name}` | {default} | {cell(s.help)} |")
    return "\n".join(out).lstrip("\n") + "\n"


# --- tasks -----------------------------------------------------------------------------

def _flag(arg) -> str:
    long = arg.name.replace("_", "-")
    if arg.positional:
        return arg.name.upper()
    if arg.kind is bool:
        return f"--[no-]{long}" if arg.default else f"--{long}"
    if arg.kind is list:
        return f"--{long} VALUE ..."
    return f"--{long} {'N' if arg.kind is int else 'VALUE'}"


def arguments(task) -> list:
    """The task's flags, with their help. (Invoke's get_arguments pops each help text from
    the task as it reads it: a second call would find none, so it is put back.)"""
    saved = dict(task.help)
    try:
        return task.get_arguments()
    finally:
        task.help = saved


def tasks_md() -> str:
    sys.path.insert(0, str(ROOT))
    import tasks

    out = []
    for name in sorted(tasks.ns.task_names):
        task = tasks.ns[name]
        out += [f"## `invoke {name}`", "", inspect.getdoc(task.body) or "", ""]
        flags = arguments(task)
        if not flags:
            out += ["No flags.", ""]
            continue
        out += ["| flag | default | what it does |", "| --- | --- | --- |"]
        for arg in flags:
            default = "" if arg.positional or arg.default in ("", None, [], False) \
                else f"`{arg.default}`"
            out.append(f"| `{_flag(arg)}` | {default} | {cell(arg.help or '')} |")
        out.append("")
    return "\n".join(out)


# --- metrics ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    name: str  # as Prometheus stores it (a counter's _total; a histogram's base name)
    kind: str
    help: str
    labels: tuple[str, ...]
    series: tuple[str, ...]  # the names PromQL can select (a histogram's _bucket, ...)


def _example_board():
    from gpuhub.hub import telemetry

    gpu = {"gpu": "0", "uuid": "GPU-0", "model": "Tesla T4", "memory_mib": 15360,
           "utilisation": 85, "memory_used_mib": 9216, "idle_seconds": 0.0,
           "out_of_service": False, "holders": [{"user": "alice", "profile": "gpu1"}]}
    mig = {"gpu": "1:0", "uuid": "MIG-1", "model": "A100 MIG 1g.5gb", "memory_mib": 5120,
           "utilisation": None, "memory_used_mib": None, "idle_seconds": None, "holders": [],
           "mig_profile": "1g.5gb", "parent": "GPU-1"}
    return telemetry.Board(rows=[gpu, mig], labs_per_profile={"gpu1": 1}, problem="",
                           taken_at=time.time(), sampled=True,
                           waiting=[{"user": "bob", "since": time.time() - 60}])


def metrics() -> list[Metric]:
    """Every metric of gpuhub's registry, as an example hub with one of everything serves it.

    A metric that the example leaves without a sample has no labels here; the unit tests
    refuse that, so a new metric comes with its example.
    """
    from prometheus_client import CollectorRegistry

    from gpuhub.core.workuse import FolderUse
    from gpuhub.hub import telemetry

    class ExampleUse:
        def latest(self):
            return {"alice": FolderUse(used=1 << 30, limit=50 << 30)}

    registry = CollectorRegistry()
    hub = telemetry.install(lambda: (_example_board, 3600.0), work_use=ExampleUse(),  # type: ignore[arg-type]
                            registry=registry)
    hub.board.latest()
    hub.spawn_duration.labels(profile="gpu1").observe(3.0)
    hub.spawns_refused.labels(reason="gpus_busy").inc()
    found = []
    for family in registry.collect():
        names = sorted({s.name for s in family.samples})
        labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
        name = family.name + "_total" if family.type == "counter" else family.name
        series = tuple(n for n in names if not n.endswith("_created")) or (name,)
        found.append(Metric(name, family.type, family.documentation, tuple(labels), series))
    return sorted(found, key=lambda m: m.name)


def metrics_md() -> str:
    out = ["| metric | type | labels | what |", "| --- | --- | --- | --- |"]
    for m in metrics():
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        also = [n for n in m.series if n != m.name]
        note = f" Series: {', '.join(f'`{n}`' for n in also)}." if also else ""
        out.append(f"| `{m.name}` | {m.kind} | {labels} | {cell(m.help)}{note} |")
    return "\n".join(out) + "\n"


# --- profiles --------------------------------------------------------------------------

def profiles_md() -> str:
    from gpuhub.core.profiles import FIELD_HELP

    out = ["| field | meaning |", "| --- | --- |"]
    out += [f"| `{name}` | {cell(help)} |" for name, help in FIELD_HELP.items()]
    return "\n".join(out) + "\n"


# --- the broker's allow-list -------------------------------------------------------------

# One example per call the broker allows (each `return Plan(...)` of Policy.plan; the unit
# tests check that every one is reached by exactly one example).
PROJECT = "gpuhub"
IMAGE = "gpuhub-lab:latest"
LAB = f"{PROJECT}-lab-bob"
WORK = f"{PROJECT}-home-bob"
# What DockerSpawner sends for bob's 1-GPU lab, as the broker's tests recorded it.
CREATE_BODY = json.dumps(gpuhub_create(PROJECT, IMAGE, "GPU-0", ""))
CALLS: tuple[tuple[str, str, str, str], ...] = (
    # (what the hub does with it, method, target, body)
    ("check that Docker answers", "GET", "/v1.43/_ping", ""),
    ("read Docker's version", "GET", "/v1.43/version", ""),
    ("list the project's labs", "GET",
     '/v1.43/containers/json?all=1&filters={"label":["com.docker.compose.project=gpuhub"]}', ""),
    ("create a lab", "POST", f"/v1.43/containers/create?name={LAB}", CREATE_BODY),
    ("inspect a lab", "GET", f"/v1.43/containers/{LAB}/json", ""),
    ("start a lab", "POST", f"/v1.43/containers/{LAB}/start", ""),
    ("stop a lab", "POST", f"/v1.43/containers/{LAB}/stop?t=10", ""),
    ("remove a lab", "DELETE", f"/v1.43/containers/{LAB}?v=0&force=1", ""),
    ("inspect the lab image", "GET", f"/v1.43/images/{IMAGE}/json", ""),
    ("inspect or remove a user's work volume", "GET", f"/v1.43/volumes/{WORK}", ""),
    ("read the work folders' use (WORK_QUOTA)", "GET", "/gpuhub/work-folders", ""),
)


def example_policy():
    from gpuhub.broker.policy import Policy

    return Policy(project=PROJECT, images=frozenset({IMAGE}), gpu_ids=frozenset({"GPU-0"}),
                  work_quota=50 << 30)


def _literal_keys(node: ast.Call) -> tuple[str, ...]:
    allowed = node.args[2] if len(node.args) > 2 else None
    if isinstance(allowed, ast.Tuple | ast.List | ast.Set):
        return tuple(e.value for e in allowed.elts if isinstance(e, ast.Constant))
    return ()


def body_keys() -> dict[str, tuple[str, ...]]:
    """Where in a create body (``""``: its top level, ``HostConfig``) which keys may appear,
    read from the literal allow-lists of ``_obj`` calls in gpuhub/broker/policy.py."""
    source = (ROOT / "gpuhub" / "broker" / "policy.py").read_text()
    keys: dict[str, tuple[str, ...]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_obj" \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
            listed = _literal_keys(node)
            if listed:
                keys[node.args[1].value] = listed
    return keys


def broker_md() -> str:
    from gpuhub.broker.policy import Call

    policy = example_policy()
    out = ["| the hub's call | method | example as the hub sends it | what the broker sends Docker |",
           "| --- | --- | --- | --- |"]
    for what, method, target, body in CALLS:
        plan = policy.plan(Call(method, target, body.encode()))
        out.append(f"| {what} | `{method}` | `{cell(target)}` | `{cell(plan.path)}` |")
    out += ["", "Keys a lab's create body may hold (anything else is refused):", ""]
    for where, keys in sorted(body_keys().items()):
        listed = ", ".join(f"`{k}`" for k in keys)
        out.append(f"- {f'`{where}`' if where else 'the body'}: {listed}")
    return "\n".join(out) + "\n"


# --- the package's modules ------------------------------------------------------------

def modules() -> list[tuple[str, str]]:
    """(dotted name, first line of its docstring) of every module of gpuhub, read from the
    source (nothing is imported: a runtime's modules may need its image's packages)."""
    package = ROOT / "gpuhub"
    found = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = doc.strip().split("\n\n")[0]
        found.append((name, first.replace("\n", " ").replace("``", "`")))
    return found


def modules_md() -> str:
    out, package = [], None
    for name, doc in modules():
        top = ".".join(name.split(".")[:2])
        if top != package:
            package = top
            out += ["", f"## `{top}`", "", "| module | what it is for |", "| --- | --- |"]
        out.append(f"| `{name}` | {cell(doc) or '(no docstring)'} |")
    return "\n".join(out).lstrip("\n") + "\n"


# --- writing -----------------------------------------------------------------------------

def pages() -> Iterator[tuple[str, str]]:
    makers = {"settings": settings_md, "tasks": tasks_md, "metrics": metrics_md,
              "profiles": profiles_md, "broker": broker_md, "modules": modules_md}
    for name in PAGES:
        yield name, makers[name]()


def write(outdir: Path) -> list[Path]:
    """Write every fragment whose text changed (Sphinx then rebuilds only what changed)."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in pages():
        path = outdir / f"{name}.md"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tools.docsref OUTDIR", file=sys.stderr)
        return 2
    for path in write(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
