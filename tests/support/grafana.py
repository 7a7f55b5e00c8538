"""The Grafana dashboard's queries (docs/grafana/gpuhub.json), read for what they ask of the hub.

Shared by tests/unit/test_grafana.py (names and labels against the hub's registry) and
tests/integration/test_grafana_queries.py (each query against a real Prometheus).
"""

from __future__ import annotations

import json
import re

from harness import ROOT
from tools import docsref

DASHBOARD = ROOT / "docs" / "grafana" / "gpuhub.json"
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan"}
# Metrics a default stack has no sample of, and what brings them.
ONLY_WITH = {"gpuhub_work_folder_used_bytes": "WORK_QUOTA",
             "gpuhub_work_folder_limit_bytes": "WORK_QUOTA"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries() -> list[tuple[str, dict]]:
    """(panel title, target) for every query of every panel."""
    return [(panel["title"], target) for panel in dashboard()["panels"]
            for target in panel.get("targets", [])]


def served() -> dict[str, set[str]]:
    """Every series name PromQL can select from the hub, with its labels."""
    names: dict[str, set[str]] = {}
    for metric in docsref.metrics():
        for series in {metric.name, *metric.series}:
            names[series] = set(metric.labels) | ({"le"} if series.endswith("_bucket") else set())
    return names


def parse(expr: str) -> tuple[set[str], set[str], set[str]]:
    """(metric names, labels matched or grouped on, labels grouped by) of a PromQL query."""
    labels, grouped = set(), set()
    for name in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*\"", expr):
        labels.add(name)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    for word, inside in re.findall(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)",
                                   expr):
        found = {label.strip() for label in inside.split(",") if label.strip()}
        labels |= found
        if word == "by":
            grouped |= found
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, $__rate_interval included
    expr = re.sub(r"\b[A-Za-z_][\w:]*\s*\(", " (", expr)  # functions and aggregations
    names = {word for word in re.findall(r"(?<![\w$.])[A-Za-z_][\w:]*", expr)
             if word.lower() not in KEYWORDS}
    return names, labels, grouped


# Grafana's own variables, as a query of the last hour would fill them in.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def for_prometheus(expr: str) -> str:
    """The query as Grafana sends it to Prometheus: its variables filled in."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr
