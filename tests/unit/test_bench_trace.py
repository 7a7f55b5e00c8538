"""bench.trace and the bench report's new figures, on inputs shaped as Docker and
JupyterHub write them."""

from __future__ import annotations

import datetime

import pytest

from bench import report, trace

T0 = datetime.datetime(2026, 12, 6, 3, 0, 0, tzinfo=datetime.UTC).timestamp()


def log_line(seconds_after: float, message: str) -> str:
    when = datetime.datetime.fromtimestamp(T0 + seconds_after, datetime.UTC)
    return (f"gpuhubbench-x-hub-1  | [I {when:%Y-%m-%d %H:%M:%S}.{when.microsecond // 1000:03d} "
            f"JupyterHub base:1] {message}")


def test_each_step_comes_from_its_source_and_missing_ones_stay_none():
    traces = [trace.LabTrace("bench1", requested=T0, ready=T0 + 2.5),
              trace.LabTrace("bench2", requested=T0 + 0.01, ready=T0 + 4.0)]
    events = [
        {"Action": "create", "timeNano": int((T0 + 0.3) * 1e9),
         "Actor": {"Attributes": {"name": "p-lab-bench1"}}},
        {"Action": "start", "timeNano": int((T0 + 0.5) * 1e9),
         "Actor": {"Attributes": {"name": "p-lab-bench1"}}},
        {"Action": "start", "timeNano": int((T0 + 9.0) * 1e9),  # a second start: not the first
         "Actor": {"Attributes": {"name": "p-lab-bench1"}}},
        {"Action": "create", "timeNano": int((T0 + 0.4) * 1e9),
         "Actor": {"Attributes": {"name": "someone-else"}}},
    ]
    trace.add_docker_steps(traces, events, {"bench1": "p-lab-bench1", "bench2": "p-lab-bench2"})
    log = "\n".join([log_line(-30, "User bench1 took 1.0 seconds to start"),  # an older storm
                     log_line(2.1, "User bench1 took 1.8 seconds to start"),
                     log_line(2.2, "Adding user bench1 to proxy /user/bench1/ => http://x"),
                     "not a log line"])
    trace.add_hub_steps(traces, log, since=T0)
    first, second = trace.as_json(traces)
    assert first == {"user": "bench1", "requested": 0.0, "created": 0.3, "started": 0.5,
                     "served": 2.1, "routed": 2.2, "ready": 2.5}
    assert second["requested"] == 0.01 and second["ready"] == 4.0
    assert [second[s] for s in ("created", "started", "served", "routed")] == [None] * 4


def test_the_hubs_own_time_comes_from_its_request_log_for_that_path_and_window():
    log = "\n".join([
        log_line(-5, "200 GET /hub/api/users/bench1 (bench1@172.18.0.3) 1.00ms"),  # before
        log_line(0.2, "200 GET /hub/api/users/bench1 (bench1@172.18.0.3) 3.25ms"),
        log_line(0.3, "200 GET /hub/api/users/bench12 (bench12@172.18.0.3) 9.00ms"),
        log_line(0.4, "200 GET /hub/api/users/bench1/server/progress (bench1@1.2.3.4) 7.00ms"),
        log_line(0.5, "404 GET /hub/api/users/bench1 (@172.18.0.3) 2.00ms"),
        log_line(0.6, "200 GET /hub/api/users/bench1 (@172.18.0.3) 12.50ms"),
        log_line(9.0, "200 GET /hub/api/users/bench1 (bench1@172.18.0.3) 4.00ms"),  # after
    ])
    assert trace.hub_request_times(log, "/hub/api/users/bench1", T0, T0 + 5) == [3.25, 12.5]


def test_the_report_shows_the_hubs_own_api_time_beside_the_clients():
    assert report._own({"p95_ms": 45, "hub_own_p95_ms": 3.4}) == " (3)"
    assert report._own({"p95_ms": 45, "hub_own_p95_ms": None}) == ""


def test_the_trace_plot_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"user": "bench1", "requested": 0.0, "created": 0.3, "started": 0.5, "served": 2.1,
             "routed": 2.2, "ready": 2.5},
            {"user": "bench2", "requested": 0.0, "created": None, "started": None,
             "served": None, "routed": None, "ready": 3.0}]
    trace.plot({"gpuhub N=2": rows, "stock N=2": []}, tmp_path / "trace.png")
    assert (tmp_path / "trace.png").read_bytes()[:4] == b"\x89PNG"


def test_the_realistic_limit_counts_what_the_hub_and_engine_spent_too():
    r = {"n": 10, "cpu": {"per_start": {"lab": 0.6, "hub": 0.2, "engine": 0.2}}}
    assert report.realistic_limit(r, cores=2) == pytest.approx(5.0)
    assert report.realistic_limit({"n": 10, "cpu": {"per_start": {
        "lab": 0.6, "hub": 0.2, "engine": None}}}, cores=2) is None


def test_the_service_table_gives_rest_and_per_start_costs():
    results = {"hubs": {"gpuhub": {"rounds": [
        {"n": 10, "reps": 1, "hub_cpu_by_service": {"p-hub-1": 1.0, "p-proxy-1": 0.5}}]}},
        "idle_cpu_seconds_per_minute": {"gpuhub": {"p-hub-1": 0.6, "p-proxy-1": 0.3,
                                                   "docker engine": 2.0, "machine": 5.0}}}
    lines = report.service_table(results)
    assert "| p-hub-1 | 0.600 | 0.100 |" in lines
    assert "| docker engine | 2.000 | - |" in lines
    assert "| all of the stack's services | 0.900 | 0.150 |" in lines


def test_a_run_may_change_gpuhubs_settings_by_name_and_says_which():
    from bench.run import parse_args

    args = parse_args(["--setting", "LAB_START_CONCURRENCY=0", "--users", "10"])
    assert args.setting == [("LAB_START_CONCURRENCY", "0")]
    with pytest.raises(SystemExit):
        parse_args(["--setting", "NOT_A_SETTING=1"])
    with pytest.raises(SystemExit):
        parse_args(["--setting", "LAB_START_CONCURRENCY"])
