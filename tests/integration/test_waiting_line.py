"""Waiting in line for a GPU on a real stack: 4 fake GPUs, 6 users, 1-GPU profile.

A stack of its own, with the line on (GPU_LINE_TIMEOUT short, so that the limit is
reached within the test; SPAWN_TIMEOUT shorter than a wait, so that a wait longer than it
is seen to end in a lab); the shared stack refuses at once instead.
"""

from __future__ import annotations

import json
import statistics
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gpuhub.core.gpureport import duration
from harness.hub import HubUser
from harness.wait import wait_until

WAIT_FOR_READY = 180  # the test's own patience for a lab to be ready
SPAWN_TIMEOUT = 20  # the stack's limit on a lab's own boot: shorter than q4's wait
QUEUE_TIMEOUT = 45  # q5 waits from the first test into the second
USERS = [f"q{i}" for i in range(6)]


@pytest.fixture(scope="module")
def qstack(stack_factory):
    s = stack_factory(GPU_LINE_TIMEOUT=str(QUEUE_TIMEOUT), SPAWN_TIMEOUT=str(SPAWN_TIMEOUT))
    s.up("--no-build")
    return s


@pytest.fixture(scope="module")
def qusers(qstack):
    made = {}
    qstack.add_users({name: f"{name}-pw-12345" for name in USERS})
    for name in USERS:
        made[name] = HubUser.signed_in(qstack.url, name, f"{name}-pw-12345")
    yield made
    for user in made.values():
        if user.server():
            user.stop(logs=qstack.logs)


def gpu_of(stack, name: str) -> str:
    return stack.inspect(stack.lab_container(name))["Config"]["Labels"]["gpuhub.gpus"]


def test_four_run_two_wait_in_order_and_the_first_gets_the_freed_gpu(qstack, qusers, measure):
    running = [qusers[n] for n in USERS[:4]]
    for user in running:
        assert user.start({"profile": "gpu1"}).status_code in (201, 202)
    for user in running:
        user.wait_ready(WAIT_FOR_READY, logs=qstack.logs)
    first, second = qusers["q4"], qusers["q5"]
    queued = time.monotonic()
    assert first.start({"profile": "gpu1"}).status_code == 202
    assert "1st in line" in first.progress_messages("in line")[-1]
    assert second.start({"profile": "gpu1"}).status_code == 202
    assert "2nd in line" in second.progress_messages("in line")[-1]
    assert first.server().get("pending") == "spawn" and second.server().get("pending") == "spawn"
    assert qstack.docker("ps", "-aq", "--filter", f"name={qstack.lab_container('q4')}").stdout == ""
    # `invoke gpus` (and so the GPU page and the metrics, from the same board) show the line.
    assert "Waiting for a GPU, in order: q4 (1 GPU, " in qstack.invoke("gpus").stdout
    waiting = json.loads(qstack.compose("exec", "-T", "hub", "python3", "-m",
                                        "gpuhub.hub.hubmodes").stdout)["waiting"]
    assert [w["user"] for w in waiting] == ["q4", "q5"]
    # The admin page's data and the metrics (Prometheus's view, with its token) come from
    # the hub's board, refreshed every GPU_SAMPLE_INTERVAL: they may be one refresh behind.
    admin = HubUser(qstack.url, "admin")
    admin.login(qstack.admin_passwords["admin"])

    def on_page():
        page = admin.http.get(f"{qstack.url}/hub/gpus?format=json", timeout=30).json()
        return [(w["user"], w["gpus"]) for w in page["waiting"]]

    wait_until(lambda: on_page() == [("q4", 1), ("q5", 1)], timeout=30, interval=1,
               what="q4 then q5 in the admin page's line", state=on_page, logs=qstack.logs)
    token = (qstack.workdir / "secrets" / f"{qstack.project}-metrics-token").read_text().strip()

    def metrics():
        text = requests.get(f"{qstack.url}/hub/metrics", timeout=30,
                            headers={"Authorization": f"Bearer {token}"}).text
        return {s.name: s.value for family in text_string_to_metric_families(text)
                for s in family.samples}

    wait_until(lambda: metrics()["gpuhub_gpu_queue_length"] == 2, timeout=30, interval=1,
               what="the metrics to count 2 in line",
               state=lambda: {k: v for k, v in metrics().items() if "queue" in k})
    assert metrics()["gpuhub_gpu_queue_oldest_wait_seconds"] > 0

    # The hub answers while two wait in line (and their progress streams are open).
    latencies = []
    for _ in range(40):
        started = time.monotonic()
        assert requests.get(f"{qstack.url}/hub/api/", timeout=10).ok
        latencies.append(time.monotonic() - started)
    p95 = statistics.quantiles(latencies, n=20)[-1]
    measure("hub API p95 while 2 wait in line (s)", p95)
    assert p95 < 1.0, latencies

    # A wait in line is not part of SPAWN_TIMEOUT: q4 waits longer than it, then starts.
    time.sleep(max(0.0, queued + SPAWN_TIMEOUT + 5 - time.monotonic()))
    assert first.server().get("pending") == "spawn", first.server()
    freed = gpu_of(qstack, "q1")
    qusers["q1"].stop(logs=qstack.logs)
    first.wait_ready(WAIT_FOR_READY, logs=qstack.logs)
    assert gpu_of(qstack, "q4") == freed
    assert time.monotonic() - queued > SPAWN_TIMEOUT + 5
    assert second.server().get("pending") == "spawn"
    assert "1st in line" in second.progress_messages("in line")[-1]


def test_cancelling_leaves_the_line_and_the_wait_limit_is_honoured(qstack, qusers):
    second = qusers["q5"]
    assert second.server().get("pending") == "spawn", second.server()
    second.stop(logs=qstack.logs)  # Cancel on the progress page: the same API call
    assert not second.server()
    assert qstack.docker("ps", "-aq", "--filter", f"name={qstack.lab_container('q5')}").stdout == ""
    # Back in line, now alone, until the limit.
    started = time.monotonic()
    assert second.start({"profile": "gpu1"}).status_code == 202
    assert "1st in line" in second.progress_messages("in line")[-1]
    messages = second.progress_messages("became free", timeout=QUEUE_TIMEOUT + 60)
    waited = time.monotonic() - started
    assert (f"no GPU you may use became free within {duration(QUEUE_TIMEOUT)} of waiting"
            in messages[-1]), messages
    assert QUEUE_TIMEOUT - 2 <= waited <= QUEUE_TIMEOUT + 30, waited
    wait_until(lambda: not second.server(), timeout=30, what="q5's failed start to end",
               state=second.server, logs=qstack.logs)
    assert qstack.docker("ps", "-aq", "--filter", f"name={qstack.lab_container('q5')}").stdout == ""


def test_a_hub_restart_ends_the_wait_with_a_message_and_leaves_nothing(qstack, qusers):
    waiting = qusers["q5"]
    assert waiting.start({"profile": "gpu1"}).status_code == 202
    assert "1st in line" in waiting.progress_messages("in line")[-1]
    qstack.invoke("restart")
    wait_until(lambda: not waiting.server(), timeout=60, what="q5's wait to have ended",
               state=waiting.server, logs=qstack.logs)
    assert qstack.docker("ps", "-aq", "--filter", f"name={qstack.lab_container('q5')}").stdout == ""
    waiting.login("q5-pw-12345")
    home = waiting.http.get(f"{qstack.url}/hub/home", timeout=30).text
    assert ("Your last lab did not start: the hub restarted while you waited in line for a "
            "GPU") in home, home[-1500:]
    # The new hub's line is empty, not the old one's.
    board = json.loads(qstack.compose("exec", "-T", "hub", "python3", "-m",
                                      "gpuhub.hub.hubmodes").stdout)
    assert board["waiting"] == []
