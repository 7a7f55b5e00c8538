"""The documentation's generated reference lists everything the code has (tools/docsref.py).

Each check reads the code another way than the generator does (the source's own
definitions, the Invoke collection, the policy's branches), so a generator that skips
something fails here.
"""

import ast
import dataclasses
import re
import sys

import pytest

from gpuhub.broker import policy
from gpuhub.core import profiles, settings
from harness import ROOT
from tools import docsref

DOCS = ROOT / "docs"


def test_every_setting_is_in_the_settings_reference_with_its_default_and_meaning():
    text = docsref.settings_md()
    for s in settings.SETTINGS:
        row = next((line for line in text.splitlines() if line.startswith(f"| `{s.name}` |")),
                   None)
        assert row is not None, f"{s.name} is not in the settings reference"
        assert (f"`{s.default}`" if s.default else "(empty)") in row, row
        assert docsref.cell(s.help) in row, row
    assert {f"## {s.group}" for s in settings.SETTINGS} <= set(text.splitlines())
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(settings.SETTINGS)
    assert "| `HUB_PORT` | `8000` |" in text and "| `LAB_MEM_LIMIT` | `auto` |" in text


def test_every_task_and_every_flag_is_in_the_tasks_reference():
    import tasks

    text = docsref.tasks_md()
    sections = dict(re.findall(r"## `invoke ([\w-]+)`\n(.*?)(?=\n## |\Z)", text, re.S))
    assert set(sections) == set(tasks.ns.task_names)
    for name in tasks.ns.task_names:
        task = tasks.ns[name]
        assert task.__doc__.strip().splitlines()[0] in sections[name], name
        for arg in docsref.arguments(task):
            flag = arg.name.upper() if arg.positional else arg.name.replace("_", "-")
            assert flag in sections[name], f"invoke {name}: {flag} is not in the reference"
            assert docsref.cell(arg.help) in sections[name], f"invoke {name} {flag}: no help"


def metric_names_in_the_source() -> dict[str, str]:
    """Every metric the hub's modules define, by name: its kind, from the source."""
    found = {}
    for path in (ROOT / "gpuhub" / "hub").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("GaugeMetricFamily", "Counter", "Histogram") \
                    and node.args and isinstance(node.args[0], ast.Constant):
                found[node.args[0].value] = node.func.id
    return found


def test_every_metric_the_hub_defines_is_in_the_metrics_reference_with_its_labels():
    defined = metric_names_in_the_source()
    assert len(defined) >= 15, defined
    listed = {m.name: m for m in docsref.metrics()}
    for name, kind in defined.items():
        served = name + "_total" if kind == "Counter" else name
        assert served in listed, f"{served} is defined in gpuhub/hub but not in the reference"
    assert all(m.name.startswith("gpuhub_") for m in listed.values())
    text = docsref.metrics_md()
    for m in listed.values():
        assert f"| `{m.name}` |" in text


def test_the_example_hub_gives_every_labelled_metric_its_labels():
    # The labels come from the example's samples: a metric without one shows no labels.
    by_name = {m.name: m for m in docsref.metrics()}
    assert by_name["gpuhub_gpu_holder"].labels == ("gpu", "model", "profile", "user", "uuid")
    assert by_name["gpuhub_gpu_mig_instance"].labels == ("gpu", "model", "parent", "profile",
                                                          "uuid")
    assert by_name["gpuhub_spawns_refused_total"].labels == ("reason",)
    assert "gpuhub_spawn_duration_seconds_bucket" in by_name["gpuhub_spawn_duration_seconds"].series
    unlabelled = {"gpuhub_gpu_queue_length", "gpuhub_gpu_queue_oldest_wait_seconds",
                  "gpuhub_gpu_sampler_up"}
    missing = [m.name for m in by_name.values() if not m.labels and m.name not in unlabelled]
    assert not missing, f"give these a sample in tools/docsref.py's example hub: {missing}"


def test_every_profile_field_is_in_the_profiles_reference():
    declared = {f.name for f in dataclasses.fields(profiles.Profile)}
    assert set(profiles.FIELD_HELP) == declared == profiles.FIELDS
    text = docsref.profiles_md()
    assert all(f"| `{name}` |" in text for name in declared)


def plan_return_lines() -> set[int]:
    source = ast.parse((ROOT / "gpuhub" / "broker" / "policy.py").read_text())
    plan = next(node for node in ast.walk(source)
                if isinstance(node, ast.FunctionDef) and node.name == "plan")
    return {node.lineno for node in ast.walk(plan)
            if isinstance(node, ast.Return) and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", "") == "Plan"}


def test_the_broker_reference_has_one_example_for_each_call_the_policy_allows():
    """Each `return Plan(...)` of Policy.plan is reached by an example, and each example
    is allowed (a refused one raises)."""
    returns = plan_return_lines()
    code = policy.Policy.plan.__code__
    reached = []

    def tracer(frame, event, arg):
        if frame.f_code is code:
            def local(frame, event, arg):
                if event == "return":
                    reached.append(frame.f_lineno)
                return local
            return local
        return None

    sample = docsref.example_policy()
    lines = []
    for _, method, target, body in docsref.CALLS:
        reached.clear()
        sys.settrace(tracer)
        try:
            sample.plan(policy.Call(method, target, body.encode()))
        finally:
            sys.settrace(None)
        lines.append(reached[-1])
    assert set(lines) == returns, (
        f"Policy.plan returns a Plan on lines {sorted(returns)}; the reference's examples "
        f"reach {sorted(lines)}: add or remove an example in tools/docsref.py CALLS")


def test_the_broker_reference_lists_the_create_bodys_keys():
    keys = docsref.body_keys()
    assert "Image" in keys[""] and "HostConfig" in keys[""]
    assert "DeviceRequests" in keys["HostConfig"] and "Privileged" not in keys["HostConfig"]
    assert "`CgroupParent`" in docsref.broker_md()


@pytest.mark.parametrize("name", docsref.PAGES)
def test_each_reference_page_includes_its_generated_fragment(name):
    page = (DOCS / "reference" / f"{name}.md").read_text()
    assert f"```{{include}} _generated/{name}.md" in page, name


def test_the_fragments_are_written_where_the_pages_include_them(tmp_path):
    written = docsref.write(tmp_path)
    assert [p.name for p in written] == [f"{n}.md" for n in docsref.PAGES]
    assert (tmp_path / "settings.md").read_text() == docsref.settings_md()
    conf = (DOCS / "conf.py").read_text()
    assert '"gpuhub_reference"' in conf
    ext = (DOCS / "_ext" / "gpuhub_reference.py").read_text()
    assert 'Path(app.srcdir) / "reference" / "_generated"' in ext


def test_a_cell_escapes_what_would_break_a_table_or_become_html():
    assert docsref.cell("a | b <user>\nc") == "a \\| b &lt;user&gt; c"


def test_every_module_of_the_package_is_in_the_module_map_with_what_it_is_for():
    import pkgutil

    import gpuhub

    walked = {"gpuhub"} | {m.name for m in pkgutil.walk_packages(gpuhub.__path__, "gpuhub.")}
    listed = dict(docsref.modules())
    assert set(listed) == walked
    undocumented = sorted(name for name, doc in listed.items() if not doc)
    assert not undocumented, f"say what these modules are for, in a docstring: {undocumented}"
    text = docsref.modules_md()
    assert all(f"| `{name}` |" in text for name in walked)
