"""bench.engine_priority's split of a storm's hub API probe at its last lab start, and the
probe's samples in bench.run's results (report.api_samples)."""

import time

from bench import report
from bench.engine_priority import KEPT, figures, held, split_at_last_start
from bench.spawns import Round
from bench.trace import LabTrace


def storm_round() -> Round:
    r = Round(n=2, seconds=[5.0, 6.0])
    r.traces = [LabTrace("a", requested=100.0, started=101.0),
                LabTrace("b", requested=100.2, started=103.0)]
    # Slow while containers start (up to 103.0), quick after.
    r.hub_api_samples = [(100.5, 0.200), (102.0, 0.150), (103.0, 0.100),
                         (104.0, 0.020), (105.0, 0.030)]
    r.hub_api_latencies = [lat for _, lat in r.hub_api_samples]
    return r


def test_the_probe_is_split_at_the_last_container_start():
    split = split_at_last_start(storm_round())
    assert split["last_start_s"] == 3.0
    assert split["during_starts_p95_ms"] == 195.0  # of 200, 150, 100 ms
    assert split["after_starts_p95_ms"] == 29.5  # of 20, 30 ms


def test_a_storm_without_starts_or_samples_has_no_split():
    r = storm_round()
    r.traces = [LabTrace("a", requested=100.0)]
    assert split_at_last_start(r) == {"during_starts_p95_ms": None, "after_starts_p95_ms": None}


def test_figures_name_the_weight_and_the_whole_storms_p95():
    x = figures(1024, storm_round())
    assert x["services_cpu_shares"] == 1024 and x["hub_api_requests"] == 5
    assert x["hub_api_p95_ms"] == 190.0


def test_results_keep_each_probe_request_after_the_storms_first_request():
    assert report.api_samples(storm_round())[:2] == [[0.5, 200.0], [2.0, 150.0]]
    assert report.api_samples(Round(n=1)) == []


def test_another_weight_is_held_against_lab_memory_and_left_to_it_after(tmp_path):
    shares = tmp_path / "cpu.shares"
    shares.write_text(str(KEPT))
    with held(shares, 1024):
        time.sleep(0.05)
        shares.write_text(str(KEPT))  # lab-memory puts its weight back
        time.sleep(0.3)
        assert shares.read_text() == "1024"
    assert shares.read_text() == str(KEPT) == "16384"


def test_the_kept_weight_is_left_to_lab_memory(tmp_path):
    shares = tmp_path / "cpu.shares"
    shares.write_text("16384")
    with held(shares, KEPT):
        shares.write_text("999")
        time.sleep(0.2)
        assert shares.read_text() == "999"
