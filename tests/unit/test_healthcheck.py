"""The hub's and proxy's Docker health check: 200 is healthy, anything else is not."""

import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time

import pytest
import yaml

from gpuhub.core import names, swarm
from gpuhub.core.swarm import HUB_HEALTHCHECK, PROXY_HEALTHCHECK
from gpuhub.services import healthcheck
from gpuhub.tasks.tls import selfsigned_command
from harness import ROOT


class Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        code = int(self.path.rsplit("/", 1)[-1])
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize(("code", "healthy"), [(200, True), (404, False), (503, False)])
def test_only_200_is_healthy(server, code, healthy):
    assert healthcheck.answers_200(f"{server}/status/{code}") is healthy


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl")
def test_https_with_a_certificate_for_another_name(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(selfsigned_command(cert, key, ["hub.example.org"], 1), shell=True,
                   check=True, capture_output=True)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Status)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        assert healthcheck.answers_200(f"https://127.0.0.1:{httpd.server_address[1]}/x/200")
    finally:
        httpd.shutdown()


def test_nothing_listening_is_unhealthy(free_port):
    assert not healthcheck.answers_200(f"http://127.0.0.1:{free_port}/hub/health", timeout=1)


def test_it_runs_as_docker_runs_it_without_site_packages(server):
    script = str(ROOT / "gpuhub" / "services" / "healthcheck.py")
    run = [sys.executable, "-I", "-S", script]
    assert subprocess.run([*run, f"{server}/status/200"]).returncode == 0
    assert subprocess.run([*run, f"{server}/status/500"]).returncode == 1


def test_hub_and_proxy_use_it():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    # compose and swarm alike
    assert services["hub"]["healthcheck"]["test"] == HUB_HEALTHCHECK
    assert services["proxy"]["healthcheck"]["test"] == PROXY_HEALTHCHECK
    assert HUB_HEALTHCHECK[-1] == "http://127.0.0.1:8081/hub/health"
    # The image has none: the gpu-sampler runs it too, and compose's --wait would wait
    # for a health check it disables.
    assert "HEALTHCHECK" not in (ROOT / "jupyterhub" / "Dockerfile").read_text()
    assert "healthcheck" not in services["gpu-sampler"]
    assert PROXY_HEALTHCHECK[1:] == ["python3", "-I", "-S", "/opt/gpuhub/gpuhub/services/healthcheck.py",
                                     "--settle", "15", "http://127.0.0.1:8000/_chp_healthz"]


def _seconds(text: str) -> float:
    assert text.endswith("s"), text
    return float(text[:-1])


def _dockerfile_healthcheck(path):
    text = (ROOT / path).read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("HEALTHCHECK ")]
    options, _, probe = line.partition(" CMD ")
    flags = dict(flag.lstrip("-").split("=") for flag in options.split()[1:])
    return {"test": ["CMD", *json.loads(probe)], **flags}


def every_health_check(tmp_path):
    """Each service's health check, wherever it is written (compose, Dockerfiles, swarm)."""
    checks = {}
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for service, spec in base.items():
        if "healthcheck" in spec:
            checks[service] = spec["healthcheck"]
    # An override's check keeps the base file's other keys (compose merges them).
    for service, spec in yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())["services"].items():
        if "healthcheck" in spec:
            checks[f"tls:{service}"] = base[service]["healthcheck"] | spec["healthcheck"]
    for path in ("jupyterhub/lab-firewall/Dockerfile", "jupyterhub/docker-proxy/Dockerfile"):
        checks[path] = _dockerfile_healthcheck(path)
        assert (f"COPY gpuhub/services/healthcheck.py {names.SERVICE_HEALTHCHECK_SCRIPT}"
                in (ROOT / path).read_text()), path
    for service, spec in swarm_stack_services(tmp_path).items():
        if not spec.get("healthcheck", {}).get("disable"):
            checks[f"swarm:{service}"] = spec["healthcheck"]
    return checks


def swarm_stack_services(tmp_path):
    from gpuhub.core.settings import validate

    secret = tmp_path / "token"
    secret.write_text("t0k3n\n")
    settings = validate({"MODE": "swarm", "REGISTRY": "registry.example.org:5000/lab",
                         "SWARM_HOMES": "/srv/homes"})
    return swarm.stack_spec(settings, profiles_path=tmp_path / "profiles.yaml", config_d=tmp_path,
                            secret_file=secret, metrics_secret_file=secret,
                            inventory_json="[]")["services"]


def test_every_health_check_settles_after_a_pass_and_its_timeout_covers_the_wait(tmp_path):
    """No service's check is a process every second once it has passed (their CPU at rest),
    none times out while it waits, and until it passes each comes every HEALTH_INTERVAL
    seconds (how soon `invoke up` sees a service healthy), HEALTH_RETRIES before a failure."""
    checks = every_health_check(tmp_path)
    assert len(checks) >= 8, sorted(checks)
    for where, check in checks.items():
        probe = check["test"]
        assert probe[1:4] == ["python3", "-I", "-S"], where
        assert probe[4] in (names.HEALTHCHECK_SCRIPT, names.SERVICE_HEALTHCHECK_SCRIPT), where
        assert probe[5:7] == ["--settle", str(names.HEALTH_SETTLE)], where
        assert _seconds(check["interval"]) == names.HEALTH_INTERVAL, where
        assert int(check["retries"]) == names.HEALTH_RETRIES, where
        assert _seconds(check["timeout"]) >= names.HEALTH_SETTLE + 3, where


class Clock:
    def __init__(self):
        self.slept = []

    def sleep(self, seconds):
        self.slept.append(seconds)


@pytest.fixture
def container(tmp_path):
    """A stand-in for the container's process 1 and its /dev/shm."""
    stat = tmp_path / "stat"
    stat.write_text("1 (python3 -m a b) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 777 9\n")
    return stat, tmp_path / "marker"


def test_a_check_waits_only_after_one_of_this_run_passed(container):
    stat, marker = container
    assert healthcheck.this_run(str(stat)) == "777"
    clock = Clock()
    healthcheck.settle(15, str(marker), str(stat), clock.sleep)
    assert clock.slept == []  # first check of the run: at once
    healthcheck.record(True, str(marker), str(stat))
    healthcheck.settle(15, str(marker), str(stat), clock.sleep)
    assert clock.slept == [15]
    healthcheck.record(False, str(marker), str(stat))
    healthcheck.settle(15, str(marker), str(stat), clock.sleep)
    assert clock.slept == [15] and not marker.exists()  # after a failure: at once


def test_a_restarted_container_checks_at_once(container):
    stat, marker = container
    healthcheck.record(True, str(marker), str(stat))
    stat.write_text(stat.read_text().replace(" 777 ", " 912 "))  # a new process 1
    clock = Clock()
    healthcheck.settle(15, str(marker), str(stat), clock.sleep)
    assert clock.slept == []


def test_without_a_place_to_remember_every_check_is_made_at_once(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("1 (x) S " + " ".join(["0"] * 17) + " 555 0\n")
    marker = tmp_path / "read-only" / "marker"  # its folder does not exist
    healthcheck.record(True, str(marker), str(stat))
    clock = Clock()
    healthcheck.settle(15, str(marker), str(stat), clock.sleep)
    assert clock.slept == []
    # Nor without process 1's start time.
    healthcheck.record(True, str(tmp_path / "m"), str(tmp_path / "none"))
    assert not (tmp_path / "m").exists()


def test_a_status_file_is_healthy_while_it_is_fresh(tmp_path):
    status = tmp_path / "lab-firewall.ok"
    assert not healthcheck.touched_within(str(status), 20)
    status.write_text("1\n")
    assert healthcheck.touched_within(str(status), 20)
    old = time.time() - 25
    os.utime(status, (old, old))
    assert not healthcheck.touched_within(str(status), 20)
    script = str(ROOT / "gpuhub" / "services" / "healthcheck.py")
    run = [sys.executable, "-I", "-S", script, "--fresh", str(status), "20"]
    assert subprocess.run(run).returncode == 1
    status.write_text("2\n")
    assert subprocess.run(run).returncode == 0
