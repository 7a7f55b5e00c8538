"""HTTPS: the TLS settings, the compose files invoke picks, the hub's cookies, tls-selfsigned."""

import os
import re
import shutil
import socket
import stat
import subprocess

import pytest
import yaml
from invoke import Config as InvokeConfig
from invoke import Context, Exit, MockContext, Result
from jupyterhub.app import JupyterHub
from traitlets.config import Config

from gpuhub.core.settings import BY_NAME, SettingsError, validate
from gpuhub.hub.hubconfig import apply_config
from gpuhub.tasks import project as project_mod
from gpuhub.tasks import stack, tls
from harness.stack import free_port
from support.hubsecrets import secrets_dir
from support.mock_docker import commands, docker_context
from support.tasks import compose

ROOT = project_mod.ROOT
CERT_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def pair(tmp_path):
    """A certificate and key that look like PEM (contents are never parsed here)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text(CERT_PEM)
    key.write_text(KEY_PEM)
    key.chmod(0o600)
    return cert, key


def problems(env: dict) -> list[str]:
    with pytest.raises(SettingsError) as info:
        validate(env)
    return info.value.problems


def context(running=False) -> MockContext:
    return docker_context(running=running)





# --- settings: both or neither; the redirect needs TLS ------------------------------------

def test_tls_is_off_by_default():
    s = validate({})
    assert (s.tls_cert, s.tls_key, s.hub_http_redirect_port) == ("", "", None)


def test_certificate_and_key_together_are_accepted():
    s = validate({"TLS_CERT": "certs/hub.pem", "TLS_KEY": "/etc/gpuhub/hub.key",
                  "HUB_PORT": "443", "HUB_HTTP_REDIRECT_PORT": "80"})
    assert (s.tls_cert, s.tls_key, s.hub_http_redirect_port) == (
        "certs/hub.pem", "/etc/gpuhub/hub.key", 80)
    assert s.raw_env()["HUB_HTTP_REDIRECT_PORT"] == "80"
    assert validate({}).raw_env()["HUB_HTTP_REDIRECT_PORT"] == ""


@pytest.mark.parametrize("given, missing", [("TLS_CERT", "TLS_KEY"), ("TLS_KEY", "TLS_CERT")])
def test_certificate_without_key_or_key_without_certificate_is_refused(given, missing):
    (problem,) = problems({given: "/etc/gpuhub/x.pem"})
    assert problem.startswith(f"{given}='/etc/gpuhub/x.pem' in the settings but {missing} is empty")
    assert "set both" in problem and "or neither" in problem


def test_redirect_port_without_tls_is_refused():
    (problem,) = problems({"HUB_HTTP_REDIRECT_PORT": "8080"})
    assert problem.startswith("HUB_HTTP_REDIRECT_PORT='8080' in the settings needs HTTPS")
    assert "set TLS_CERT and TLS_KEY, or empty HUB_HTTP_REDIRECT_PORT" in problem


def test_redirect_port_must_differ_from_the_hub_port():
    (problem,) = problems({"TLS_CERT": "c", "TLS_KEY": "k", "HUB_PORT": "8443",
                           "HUB_HTTP_REDIRECT_PORT": "8443"})
    assert "HUB_HTTP_REDIRECT_PORT='8443'" in problem and "is HUB_PORT too" in problem


@pytest.mark.parametrize("bad, fix", [("http", "whole number from 1 to 65535"),
                                      ("70000", "whole number from 1 to 65535")])
def test_redirect_port_must_be_a_port(bad, fix):
    (problem,) = problems({"TLS_CERT": "c", "TLS_KEY": "k", "HUB_HTTP_REDIRECT_PORT": bad})
    assert f"HUB_HTTP_REDIRECT_PORT={bad!r}" in problem and fix in problem


def test_a_home_relative_path_is_refused():
    (problem,) = problems({"TLS_CERT": "~/hub.pem", "TLS_KEY": "/k"})
    assert problem.startswith("TLS_CERT='~/hub.pem' in the settings: write the full path")


def test_combinations_wait_until_every_value_parses():
    # A bad port is reported on its own, not drowned in follow-on complaints.
    assert problems({"HUB_PORT": "x", "HUB_HTTP_REDIRECT_PORT": "80"}) == [
        p for p in problems({"HUB_PORT": "x"})]


# --- compose: the overrides only when TLS is on --------------------------------------------

def test_compose_uses_only_the_base_file_without_tls(env_file):
    path = env_file()
    project = project_mod.load()
    assert project.compose_files == ["docker-compose.yml"]
    assert project.compose("ps") == compose(path, "ps")


def test_compose_adds_the_tls_override_when_tls_is_on(env_file):
    path = env_file(TLS_CERT="c.pem", TLS_KEY="k.pem")
    assert project_mod.load().compose("ps") == compose(path, "ps", ["docker-compose.tls.yml"])


def test_compose_adds_the_redirect_override_with_a_redirect_port(env_file):
    path = env_file(TLS_CERT="c.pem", TLS_KEY="k.pem", HUB_HTTP_REDIRECT_PORT="8080")
    assert project_mod.load().compose("ps") == compose(
        path, "ps", ["docker-compose.tls.yml", "docker-compose.tls-redirect.yml"])


def test_override_files_exist_and_use_only_settings():
    for name in ("docker-compose.tls.yml", "docker-compose.tls-redirect.yml"):
        text = (ROOT / name).read_text()
        yaml.safe_load(text)
        for var in re.findall(r"(?<!\$)\$\{(\w+)", text):
            assert var in BY_NAME or var == "GPUHUB_TLS_DIGEST", f"{name} uses ${{{var}}}"


def test_tls_override_mounts_the_pair_and_probes_https():
    doc = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())
    proxy = doc["services"]["proxy"]
    assert set(proxy["secrets"]) == {"proxy_auth_token", "tls_cert", "tls_key"}
    assert "--ssl-cert=/run/secrets/tls_cert" in proxy["environment"]["GPUHUB_PROXY_TLS_ARGS"]
    assert "--ssl-key=/run/secrets/tls_key" in proxy["environment"]["GPUHUB_PROXY_TLS_ARGS"]
    assert "https://127.0.0.1:8000/_chp_healthz" in " ".join(proxy["healthcheck"]["test"])
    assert doc["secrets"]["tls_cert"]["file"].startswith("${TLS_CERT:?")
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = base["services"]["proxy"]["command"][-1]
    assert command.endswith("$$GPUHUB_PROXY_TLS_ARGS $$GPUHUB_PROXY_REDIRECT_ARGS")


def test_redirect_override_publishes_the_redirect_port_to_the_https_port():
    doc = yaml.safe_load((ROOT / "docker-compose.tls-redirect.yml").read_text())
    proxy = doc["services"]["proxy"]
    assert proxy["environment"]["GPUHUB_PROXY_REDIRECT_ARGS"] == (
        "--redirect-port=8080 --redirect-to=${HUB_PORT:-8000}")
    (port,) = proxy["ports"]
    assert port.startswith("${HUB_BIND_ADDRESS:-0.0.0.0}:${HUB_HTTP_REDIRECT_PORT:?")
    assert port.endswith(":8080")


# --- hub config: https and Secure cookies ---------------------------------------------------

def hub_config(tmp_path, **settings) -> Config:
    c = Config()
    apply_config(c, validate(settings), env={}, data_dir=tmp_path, secrets_dir=secrets_dir(tmp_path))
    return c


def test_without_tls_the_hub_is_http_and_leaves_cookies_alone(tmp_path):
    c = hub_config(tmp_path)
    assert c.JupyterHub.bind_url == "http://:8000"
    assert "tornado_settings" not in c.JupyterHub
    assert "ssl_cert" not in c.JupyterHub


def test_with_tls_cookies_are_secure_and_urls_https(tmp_path):
    c = hub_config(tmp_path, TLS_CERT="c.pem", TLS_KEY="k.pem")
    assert c.JupyterHub.tornado_settings == {"cookie_options": {"secure": True}}
    assert c.JupyterHub.bind_url == "https://:8000"
    # JupyterHub forces bind_url back to http:// without ssl_cert: check what it keeps.
    app = JupyterHub(config=c)
    assert app.bind_url == "https://:8000"
    assert app.ssl_cert == "/run/secrets/tls_cert"


def test_tls_config_is_idempotent(tmp_path):
    c = hub_config(tmp_path, TLS_CERT="c.pem", TLS_KEY="k.pem")
    again = hub_config(tmp_path, TLS_CERT="c.pem", TLS_KEY="k.pem")
    assert c.JupyterHub == again.JupyterHub


# --- invoke up: the pair is checked before Docker -------------------------------------------


def test_up_with_tls_starts_with_the_override_and_prints_https(
        env_file, pair, no_gpu_detection, capsys):
    cert, key = pair
    port, redirect = free_port(), free_port()
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=port, ADMIN_USERS="",
                    TLS_CERT=cert, TLS_KEY=key, HUB_HTTP_REDIRECT_PORT=redirect)
    c = context()
    stack.up(c, build=False)
    up = compose(path, "up -d --wait --wait-timeout 180",
                 ["docker-compose.tls.yml", "docker-compose.tls-redirect.yml",
                  "docker-compose.gpu-sampler.yml", "docker-compose.labs-apart.yml"])
    assert commands(c)[-1] == up
    env = c.run.call_args_list[-1].kwargs["env"]
    assert (env["TLS_CERT"], env["TLS_KEY"]) == (str(cert), str(key))
    assert len(env["GPUHUB_TLS_DIGEST"]) == 64
    assert capsys.readouterr().out.endswith(
        f"gpuhub is up: https://localhost:{port}/  (1 GPU (1× NVIDIA GPU); "
        f"http://localhost:{redirect}/ redirects there)\n"
        f"  each user's lab has its own origin: https://<user>.localhost:{port}/  (this "
        "machine only: set HUB_DOMAIN to a DNS name with a wildcard record for other "
        "machines)\n")


def test_a_renewed_pair_changes_the_digest(env_file, pair):
    cert, key = pair
    env_file(TLS_CERT=cert, TLS_KEY=key)
    before = tls.files_digest(project_mod.load())
    cert.write_text(CERT_PEM.replace("MIIB", "MIIC"))
    assert tls.files_digest(project_mod.load()) != before
    env_file()
    assert tls.files_digest(project_mod.load()) == ""


def test_up_with_a_relative_path_resolves_it_against_the_repository(env_file, no_gpu_detection):
    env_file(TLS_CERT="no/such/cert.pem", TLS_KEY="no/such/key.pem")
    c = context()
    with pytest.raises(Exit) as info:
        stack.up(c)
    assert info.value.message == (
        f"error: TLS_CERT='no/such/cert.pem': there is no file {str(ROOT / 'no/such/cert.pem')!r};"
        " fix the path, or make a pair for testing with `invoke tls-selfsigned`")
    assert commands(c) == [], "a missing certificate must stop before any docker command"


@pytest.mark.parametrize("which, content, fragment", [
    ("cert", KEY_PEM, "is not a PEM certificate"),
    ("key", CERT_PEM, "is not a PEM private key"),
])
def test_up_refuses_a_file_that_is_not_the_right_pem(env_file, pair, no_gpu_detection,
                                                     which, content, fragment):
    cert, key = pair
    {"cert": cert, "key": key}[which].write_text(content)
    env_file(TLS_CERT=cert, TLS_KEY=key)
    c = context()
    with pytest.raises(Exit) as info:
        stack.up(c)
    assert fragment in info.value.message and "\n" not in info.value.message
    assert commands(c) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_up_refuses_an_unreadable_key(env_file, pair, no_gpu_detection):
    cert, key = pair
    key.chmod(0)
    env_file(TLS_CERT=cert, TLS_KEY=key)
    with pytest.raises(Exit) as info:
        stack.up(context())
    assert "is not readable by this user" in info.value.message


def test_up_warns_about_a_key_others_can_read(env_file, pair, no_gpu_detection, capsys):
    cert, key = pair
    key.chmod(0o644)
    env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port(), ADMIN_USERS="",
             TLS_CERT=cert, TLS_KEY=key)
    stack.up(context(), build=False)
    assert "warning: TLS_KEY" in capsys.readouterr().err


def test_up_refuses_a_taken_redirect_port(env_file, pair, no_gpu_detection):
    cert, key = pair
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        redirect = taken.getsockname()[1]
        env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port(), TLS_CERT=cert,
                 TLS_KEY=key, HUB_HTTP_REDIRECT_PORT=redirect)
        with pytest.raises(Exit) as info:
            stack.up(context())
    assert info.value.message.startswith(f"error: port {redirect} on 127.0.0.1 is already in use")
    assert "HUB_HTTP_REDIRECT_PORT" in info.value.message


# --- invoke tls-selfsigned --------------------------------------------------------------------

@pytest.fixture
def openssl_present(monkeypatch):
    monkeypatch.setattr(tls.shutil, "which", lambda name: f"/usr/bin/{name}")


def test_selfsigned_runs_openssl_and_prints_the_settings(env_file, tmp_path, openssl_present,
                                                         capsys):
    path = env_file(COMPOSE_PROJECT_NAME="demo", SECRETS_DIR=tmp_path / "secrets")
    c = MockContext(run={re.compile("openssl .*"): Result()})
    tls.tls_selfsigned(c)
    cert = tmp_path / "secrets" / "demo-tls-cert.pem"
    key = tmp_path / "secrets" / "demo-tls-key.pem"
    (call,) = c.run.call_args_list
    assert call.args[0] == (
        "openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 365 -subj /CN=localhost "
        "-addext 'subjectAltName=DNS:localhost,DNS:*.localhost,IP:127.0.0.1' "
        f"-keyout {key} -out {cert}")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    out = capsys.readouterr().out
    assert out.endswith(f"TLS_CERT={cert}\nTLS_KEY={key}\n")
    assert str(path) in out


def test_selfsigned_hosts_days_and_output(env_file, tmp_path, openssl_present):
    env_file(COMPOSE_PROJECT_NAME="demo")
    c = MockContext(run={re.compile("openssl .*"): Result()})
    tls.tls_selfsigned(c, host=["hub.example.org", "192.0.2.10", "::1"], days=30,
                       output=str(tmp_path / "out"))
    command = c.run.call_args_list[0].args[0]
    assert "-days 30 -subj /CN=hub.example.org " in command
    assert "subjectAltName=DNS:hub.example.org,IP:192.0.2.10,IP:::1 " in command
    assert f"-out {tmp_path / 'out' / 'demo-tls-cert.pem'}" in command


def test_selfsigned_adds_a_specific_bind_address(env_file, openssl_present, tmp_path):
    env_file(HUB_BIND_ADDRESS="192.0.2.7", SECRETS_DIR=tmp_path)
    c = MockContext(run={re.compile("openssl .*"): Result()})
    tls.tls_selfsigned(c)
    assert ("'subjectAltName=DNS:localhost,DNS:*.localhost,IP:127.0.0.1,IP:192.0.2.7' "
            in c.run.call_args_list[0].args[0])


def test_selfsigned_covers_the_labs_of_hub_domain(env_file, openssl_present, tmp_path):
    """Each lab is served at <user>.HUB_DOMAIN: the certificate covers *.HUB_DOMAIN too,
    also when --host names the hub; not when labs share the hub's origin."""
    env_file(HUB_DOMAIN="gpu.example.org", SECRETS_DIR=tmp_path)
    c = MockContext(run={re.compile("openssl .*"): Result()})
    tls.tls_selfsigned(c)
    assert ("'subjectAltName=DNS:gpu.example.org,DNS:*.gpu.example.org,DNS:localhost,"
            "IP:127.0.0.1' " in c.run.call_args_list[0].args[0])
    tls.tls_selfsigned(c, host=["192.0.2.10", "gpu.example.org"], force=True)
    assert ("'subjectAltName=IP:192.0.2.10,DNS:gpu.example.org,DNS:*.gpu.example.org' "
            in c.run.call_args_list[1].args[0])
    env_file(HUB_DOMAIN="192.0.2.10", USERS_CAN_ACT_AS_EACH_OTHER="true", SECRETS_DIR=tmp_path)
    tls.tls_selfsigned(c, force=True)
    assert "subjectAltName=IP:192.0.2.10,DNS:localhost,IP:127.0.0.1 " in c.run.call_args_list[2].args[0]


def test_selfsigned_never_overwrites_without_force(env_file, tmp_path, openssl_present):
    env_file(COMPOSE_PROJECT_NAME="demo", SECRETS_DIR=tmp_path)
    (tmp_path / "demo-tls-key.pem").write_text(KEY_PEM)
    c = MockContext(run={re.compile("openssl .*"): Result()})
    with pytest.raises(Exit) as info:
        tls.tls_selfsigned(c)
    assert "already exist" in info.value.message and "--force" in info.value.message
    assert c.run.call_count == 0
    assert (tmp_path / "demo-tls-key.pem").read_text() == KEY_PEM
    tls.tls_selfsigned(c, force=True)
    assert c.run.call_count == 1


@pytest.mark.parametrize("kwargs, fragment", [
    ({"host": ["bad host;rm"]}, "--host 'bad host;rm' is neither a DNS name"),
    ({"days": 0}, "--days 0 must be 1 or more"),
])
def test_selfsigned_refuses_bad_flags_before_writing(env_file, tmp_path, openssl_present,
                                                     kwargs, fragment):
    env_file(SECRETS_DIR=tmp_path / "s")
    c = MockContext(run={})
    with pytest.raises(Exit) as info:
        tls.tls_selfsigned(c, **kwargs)
    assert fragment in info.value.message
    assert not (tmp_path / "s").exists()


def test_selfsigned_without_openssl_says_what_to_install(env_file, monkeypatch):
    monkeypatch.setattr(tls.shutil, "which", lambda name: None)
    with pytest.raises(Exit) as info:
        tls.tls_selfsigned(MockContext(run={}))
    assert info.value.message.startswith("error: openssl is not installed on this host")


def test_selfsigned_reports_an_openssl_failure_in_one_line(env_file, tmp_path, openssl_present):
    env_file(SECRETS_DIR=tmp_path)
    c = MockContext(run={re.compile("openssl .*"): Result(stderr="req: boom\nbad thing\n",
                                                           exited=1)})
    with pytest.raises(Exit) as info:
        tls.tls_selfsigned(c)
    assert info.value.message == "error: openssl could not make the pair: bad thing"


@pytest.mark.skipif(not shutil.which("openssl"), reason="openssl is not installed")
def test_selfsigned_with_the_real_openssl_makes_a_usable_pair(env_file, tmp_path, capsys):
    env_file(COMPOSE_PROJECT_NAME="demo", SECRETS_DIR=tmp_path)
    real = Context(InvokeConfig(overrides={"run": {"in_stream": False}}))  # as tasks.py sets
    tls.tls_selfsigned(real, host=["localhost", "127.0.0.1"], days=2)
    cert, key = tmp_path / "demo-tls-cert.pem", tmp_path / "demo-tls-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "DNS:localhost, DNS:*.localhost, IP Address:127.0.0.1" in text
    env_file(TLS_CERT=cert, TLS_KEY=key)
    tls.check_files(project_mod.load())  # what `invoke up` accepts
