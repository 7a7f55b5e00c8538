"""bench.probes.HubApiProbe: its own process times requests to a real HTTP server on
loopback, and reports answers, refusals and what it could not reach."""

from __future__ import annotations

import http.server
import threading
import time

from bench.probes import HubApiProbe
from harness.stack import free_port


class _Hub(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        ok = self.headers.get("Authorization") == "token right"
        time.sleep(0.02 if ok else 0)
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def serve() -> tuple[http.server.ThreadingHTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/hub/api/users/bench1"


def test_each_answer_is_timed_from_its_own_process_on_the_callers_clock():
    server, url = serve()
    try:
        before = time.monotonic()
        with HubApiProbe(url, "right", interval=0.05) as probe:
            time.sleep(0.6)
        after = time.monotonic()
    finally:
        server.shutdown()
    assert probe.errors == [] and probe.failures == 0
    assert len(probe.answers) >= 5, probe.answers
    assert all(before <= sent <= after for sent, _ in probe.answers)
    assert all(0.02 <= latency < 0.5 for _, latency in probe.answers), probe.answers
    middle = probe.answers[len(probe.answers) // 2][0]
    assert 0 < len(probe.latencies(middle, after)) < len(probe.answers)


def test_refusals_and_an_unreachable_hub_are_counted_not_timed():
    server, url = serve()
    try:
        with HubApiProbe(url, "wrong", interval=0.05) as refused:
            time.sleep(0.3)
    finally:
        server.shutdown()
        server.server_close()
    assert refused.answers == [] and refused.failures >= 2
    with HubApiProbe(f"http://127.0.0.1:{free_port()}/hub/api", "right", interval=0.05) as gone:
        time.sleep(0.3)
    assert gone.answers == [] and gone.errors and "ConnectionError" in gone.errors[0]
