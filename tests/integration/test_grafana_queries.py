"""The Grafana dashboard's queries answer with data: each panel's PromQL (docs/grafana/gpuhub.json,
Grafana's variables filled in as for the last hour) against a real Prometheus (Debian's,
the `prometheus` fixture) scraping a real hub with a GPU lab running, a refused start and
the NVIDIA double's scripted readings.

A panel whose metrics only a setting brings (the work folders: WORK_QUOTA) has no data on
the default test stack and is left out here; its names are checked by the unit test.
"""

from __future__ import annotations

import pytest

from harness.wait import wait_until
from support import gpu_state
from support.grafana import ONLY_WITH, for_prometheus, parse, queries
from support.prometheus import query

SPAWN_TIMEOUT = 180
NAME = "grafuser"


@pytest.fixture(scope="module")
def busy_gpu_lab(stack):
    """grafuser's 1-GPU lab, its GPU 60 % busy with 2 GiB in use; a refused start too."""
    user = stack.signed_up(NAME)
    user.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=stack.logs)
    uuid = stack.inspect(stack.lab_container(NAME))["Config"]["Labels"]["gpuhub.gpus"]
    gpu_state.write({uuid: (60, 2048)})
    refused = stack.signed_up("grafrefused").start({"profile": "no-such-profile"})
    assert refused.status_code == 400, refused.text
    yield user, uuid
    gpu_state.clear()
    if user.server():
        user.stop(logs=stack.logs)


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, query as Prometheus gets it), but those only a setting feeds."""
    return [(title, for_prometheus(target["expr"])) for title, target in queries()
            if not parse(target["expr"])[0] & set(ONLY_WITH)]


def test_every_panel_of_the_dashboard_answers_with_data(stack, busy_gpu_lab, prometheus):
    url, log = prometheus
    _, uuid = busy_gpu_lab
    wanted = panel_queries()
    assert len(wanted) >= 10

    def empty() -> list[str]:
        return [f"{title}: {promql}" for title, promql in wanted if not query(url, promql)]

    # Rates need two scrapes of the spawn histogram within the window: a few seconds.
    wait_until(lambda: not empty(), timeout=120, interval=2,
               what="every Grafana panel's query answers with data",
               state=empty, logs=lambda: log.read_text()[-3000:])
    held = query(url, "max by (gpu, uuid, user, profile) (gpuhub_gpu_holder)")
    assert {(h["metric"]["uuid"], h["metric"]["user"]) for h in held} >= {(uuid, NAME)}
    [refused] = query(url, for_prometheus(
        'sum by (reason) (increase(gpuhub_spawns_refused_total{reason="bad_profile"}[$__range]))'))
    assert float(refused["value"][1]) >= 0


def test_the_left_out_panels_are_only_those_a_setting_feeds():
    left_out = [title for title, target in queries()
                if parse(target["expr"])[0] & set(ONLY_WITH)]
    assert left_out == ["Work folders (WORK_QUOTA)"]
