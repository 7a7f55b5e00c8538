"""One origin per user: HUB_DOMAIN, the refusal of a bare IP, and what each side is told."""

from types import SimpleNamespace

import pytest
import yaml
from tornado import web

from gpuhub.core import origins, swarm
from gpuhub.core.settings import SettingsError, validate
from gpuhub.hub.origins import LoginOnHubHostOnly
from harness import ROOT


def test_the_default_is_localhost_with_each_lab_on_its_own_origin():
    s = validate({})
    assert (s.hub_domain, s.users_can_act_as_each_other) == ("localhost", False)
    assert origins.isolated(s)
    assert origins.hub_origin(s) == "http://localhost:8000"
    assert origins.lab_origin_example(s, "alice") == "http://alice.localhost:8000"


@pytest.mark.parametrize("settings, origin", [
    ({"HUB_DOMAIN": "GPU.Example.org."}, "http://gpu.example.org:8000"),
    ({"HUB_DOMAIN": "gpu.example.org", "HUB_PORT": "80"}, "http://gpu.example.org"),
    ({"HUB_DOMAIN": "gpu.example.org", "HUB_PORT": "443", "TLS_CERT": "c.pem",
      "TLS_KEY": "k.pem"}, "https://gpu.example.org"),
    ({"HUB_DOMAIN": "gpu.example.org", "HUB_PORT": "8443", "TLS_CERT": "c.pem",
      "TLS_KEY": "k.pem"}, "https://gpu.example.org:8443"),
])
def test_the_hub_origin_has_the_scheme_and_only_a_port_that_is_not_the_schemes_own(
        settings, origin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    assert origins.hub_origin(validate(settings)) == origin


@pytest.mark.parametrize("domain", ["http://gpu.example.org", "gpu.example.org:8000",
                                    "gpu.example.org/hub", "-gpu.example.org", "gpu..org",
                                    "gpu_1.example.org", "*.example.org", ""])
def test_hub_domain_must_be_a_dns_name(domain):
    with pytest.raises(SettingsError, match="HUB_DOMAIN.*DNS name users open the hub at"):
        validate({"HUB_DOMAIN": domain})


@pytest.mark.parametrize("address", ["192.0.2.10", "2001:db8::1", "[2001:db8::1]"])
def test_a_bare_ip_address_is_refused_in_one_line_naming_the_fix(address):
    with pytest.raises(SettingsError) as refused:
        validate({"HUB_DOMAIN": address})
    message = str(refused.value)
    assert f"HUB_DOMAIN={address!r} is an IP address" in message
    assert "wildcard record" in message and "USERS_CAN_ACT_AS_EACH_OTHER=true" in message
    accepted = validate({"HUB_DOMAIN": address, "USERS_CAN_ACT_AS_EACH_OTHER": "true"})
    assert not origins.isolated(accepted)
    assert origins.proxy_routing_args(accepted) == ""


def test_the_proxy_routes_by_host_in_compose_unless_the_shared_origin_file_is_added():
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["proxy"]
    assert base["environment"]["GPUHUB_PROXY_ROUTING_ARGS"] == origins.HOST_ROUTING_ARG
    assert "$$GPUHUB_PROXY_ROUTING_ARGS" in base["command"][2]
    shared = yaml.safe_load((ROOT / "docker-compose.shared-origin.yml").read_text())
    assert shared["services"] == {"proxy": {"environment": {"GPUHUB_PROXY_ROUTING_ARGS": ""}}}


def test_the_swarm_proxy_routes_by_host_unless_labs_share_the_hub_origin():
    assert swarm.proxy_command(validate({}))[2].endswith(" --host-routing")
    shared = validate({"USERS_CAN_ACT_AS_EACH_OTHER": "true"})
    assert swarm.proxy_command(shared) == swarm.PROXY_COMMAND


def handler(host: str):
    return SimpleNamespace(request=SimpleNamespace(host=host))


@pytest.mark.parametrize("host", ["localhost:8000", "LOCALHOST:8000", "localhost"])
def test_a_login_on_the_hub_host_goes_through(host):
    hook = LoginOnHubHostOnly("localhost", "http://localhost:8000")
    authentication = {"name": "admin"}
    assert hook(SimpleNamespace(log=None), handler(host), authentication) is authentication


@pytest.mark.parametrize("host", ["alice.localhost:8000", "127.0.0.1:8000", "[::1]:8000",
                                  "localhost.evil.example:8000", "", "alice.localhost"])
def test_a_login_on_any_other_host_is_refused(host, caplog):
    hook = LoginOnHubHostOnly("localhost", "http://localhost:8000")
    log = SimpleNamespace(warning=lambda *a: None)
    with pytest.raises(web.HTTPError) as refused:
        hook(SimpleNamespace(log=log), handler(host), {"name": "admin"})
    assert refused.value.status_code == 403
    assert "http://localhost:8000/hub/login" in refused.value.log_message


@pytest.mark.parametrize("header, name", [("localhost:8000", "localhost"), ("a.b", "a.b"),
                                          ("[::1]:80", "::1"), ("[::1", "[::1"),
                                          ("A.Localhost:1", "a.localhost")])
def test_request_hostname(header, name):
    assert origins.request_hostname(header) == name


@pytest.mark.parametrize("public, origin", [
    ("https://gpu.example.org", "https://gpu.example.org"),
    ("HTTPS://GPU.example.org:8443/", "https://gpu.example.org:8443"),
])
def test_behind_a_reverse_proxy_the_public_url_gives_scheme_and_port(public, origin):
    s = validate({"HUB_DOMAIN": "gpu.example.org", "HUB_PUBLIC_URL": public, "HUB_PORT": "8000"})
    assert origins.hub_origin(s) == origin
    assert origins.lab_origin_example(s, "ann") == origin.replace("://", "://ann.")


@pytest.mark.parametrize("public, words", [
    ("gpu.example.org", "hub's public address"), ("ftp://gpu.example.org", "no path"),
    ("https://gpu.example.org/hub", "no path"), ("https://gpu.example.org:99999", "public address"),
    ("https://other.example.org", "names another host than HUB_DOMAIN"),
])
def test_a_bad_public_url_is_refused(public, words):
    with pytest.raises(SettingsError, match=words):
        validate({"HUB_DOMAIN": "gpu.example.org", "HUB_PUBLIC_URL": public})
