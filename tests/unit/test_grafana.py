"""The Grafana dashboard (docs/grafana/gpuhub.json) asks only for what the hub serves.

Each panel's PromQL is read for the metric names and labels it uses, and those are checked
against the hub's metrics registry (as tools/docsref.py reads it: an example hub with one
of everything). tests/integration/test_grafana_queries.py runs the same queries against a
real Prometheus scraping a real hub.
"""

import re

import pytest

from support.grafana import ONLY_WITH, dashboard, parse, queries, served
from tools import docsref


def problems(title: str, target: dict, have: dict[str, set[str]]) -> list[str]:
    names, labels, grouped = parse(target["expr"])
    found = []
    if not names:
        found.append(f"{title}: {target['expr']!r} names no metric")
    unknown = sorted(n for n in names if n not in have)
    found += [f"{title}: the hub serves no {n}" for n in unknown]
    known = set().union(*(have[n] for n in names if n in have))
    found += [f"{title}: no metric of {sorted(names)} has the label {label}"
              for label in sorted(labels - known)]
    legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    shown = grouped if grouped or re.search(r"\b(sum|count|min|max|avg)\s*\(", target["expr"]) \
        else known
    found += [f"{title}: the legend's {{{{{label}}}}} is not a label of the result"
              for label in sorted(legend - shown)]
    return found


def test_every_query_names_metrics_and_labels_the_hub_serves():
    have = served()
    found = [p for title, target in queries() for p in problems(title, target, have)]
    assert len(queries()) >= 10
    assert not found, "\n".join(found)


def test_the_check_catches_a_misspelled_metric_label_or_legend():
    have = served()
    assert problems("t", {"expr": "rate(gpuhub_spawns_refused[5m])"}, have) == [
        "t: the hub serves no gpuhub_spawns_refused"]
    assert problems("t", {"expr": 'gpuhub_gpu_holder{username="a"}'}, have) == [
        "t: no metric of ['gpuhub_gpu_holder'] has the label username"]
    assert problems("t", {"expr": "sum by (user) (gpuhub_gpu_holder)",
                          "legendFormat": "{{gpu}}"}, have) == [
        "t: the legend's {{gpu}} is not a label of the result"]
    assert parse('histogram_quantile(0.95, sum by (le) (rate(x_bucket{a="1"}[$__rate_interval])))') \
        == ({"x_bucket"}, {"le", "a"}, {"le"})


def test_every_metric_but_mig_instances_has_a_panel():
    used = set().union(*(parse(target["expr"])[0] for _, target in queries()))
    bases = {m.name for m in docsref.metrics() if used & {m.name, *m.series}}
    missing = {m.name for m in docsref.metrics()} - bases - {"gpuhub_gpu_mig_instance"}
    assert not missing, f"no panel shows {sorted(missing)}"


def test_the_dashboard_imports_with_a_chosen_prometheus():
    board = dashboard()
    assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"]
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert board["uid"] == "gpuhub"


@pytest.mark.parametrize("name", sorted(ONLY_WITH))
def test_what_only_a_setting_brings_is_a_real_metric(name):
    assert name in served()
