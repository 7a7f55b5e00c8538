"""The hub's and proxy's Docker health check: 200 is healthy, anything else is not."""

import http.server
import shutil
import ssl
import subprocess
import sys
import threading

import pytest
import yaml

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
                                     "http://127.0.0.1:8000/_chp_healthz"]
