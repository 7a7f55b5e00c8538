"""One home for names: the places that are not Python agree with gpuhub/core/names.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from dockerspawner import DockerSpawner
from traitlets.config import Config

from gpuhub.broker.policy import Policy
from gpuhub.core import names, swarm
from gpuhub.core.settings import validate
from gpuhub.hub import hubconfig
from gpuhub.labfirewall import service as labfirewall
from harness import ROOT
from support.dockerfiles import instructions

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
LOGIN = yaml.safe_load((ROOT / "docker-compose.login.yml").read_text())
TLS = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())
SOCKET = yaml.safe_load((ROOT / "docker-compose.docker-socket.yml").read_text())
LAB_FIREWALL_IMAGE = ROOT / "jupyterhub" / "lab-firewall" / "Dockerfile"
PROJECT = "${COMPOSE_PROJECT_NAME:-gpuhub}"  # the project, as the compose files spell it


def mounts(service: dict) -> dict[str, tuple[str, str]]:
    """A compose service's volumes (short syntax), as mount point -> (source, mode)."""
    found = {}
    for volume in service.get("volumes") or ():
        # The source may hold ":" (${VAR:-default}); the mount point and mode never do.
        rest, _, target = volume.rpartition(":")
        mode = "rw"
        if target in ("ro", "rw"):
            mode, (rest, _, target) = target, rest.rpartition(":")
        found[target] = (rest, mode)
    return found


@pytest.mark.parametrize("user", ["bob", "ann-lee", "x_1", "a.b", "zoë", "UPPER"])
def test_user_names_are_escaped_as_dockerspawner_does(user):
    assert names.escape_user(user) == DockerSpawner._escape(user)


def test_compose_names_the_labs_network_and_the_broker_as_names_does():
    network = COMPOSE["networks"]["labs"]
    assert network["name"] == names.labs_network(PROJECT)
    assert network["enable_ipv6"] is False
    hub_env = COMPOSE["services"]["hub"]["environment"]
    assert hub_env["DOCKER_HOST"] == names.DOCKER_BROKER_URL
    assert names.DOCKER_BROKER_SERVICE in COMPOSE["services"]
    assert names.LAB_FIREWALL_SERVICE in COMPOSE["services"]


def test_the_broker_allows_exactly_what_the_hub_creates():
    """The hub's DockerSpawner config renders the names the broker's policy accepts."""
    settings = validate({"COMPOSE_PROJECT_NAME": "lab7", "SHARED_DATA_DIR": "/srv/data"})
    c = Config()
    hubconfig.update_spawner(c, settings)
    policy = Policy(project="lab7", images=frozenset({settings.lab_image}),
                    shared_dir="/srv/data")
    user = names.escape_user("ann-lee")
    container = c.DockerSpawner.name_template.format(prefix=c.DockerSpawner.prefix,
                                                     username=user)
    assert container == names.lab_container("lab7", "ann-lee")
    assert policy.lab_suffix(container) == user
    assert c.DockerSpawner.network_name == policy.labs_network
    binds = {source.format(username=user): (target if isinstance(target, str) else target["bind"],
                                            "rw" if isinstance(target, str) else target["mode"])
             for source, target in c.DockerSpawner.volumes.items()}
    assert sorted(f"{s}:{t}:{m}" for s, (t, m) in binds.items()) == sorted(
        policy.allowed_binds(user).values())
    assert policy.work_volume_suffix(names.work_volume("lab7", "ann-lee")) == user


def test_the_usage_records_live_on_the_hub_data_volume_and_go_into_the_backup():
    from gpuhub.core import usage
    from gpuhub.tasks import backup

    assert usage.DEFAULT_JOURNAL == hubconfig.DATA_DIR / names.USAGE_JOURNAL_FILE
    hub_mounts = mounts(COMPOSE["services"]["hub"])
    assert hub_mounts[str(hubconfig.DATA_DIR)] == (names.HUB_DATA_VOLUME, "rw")
    assert backup.ARCHIVE_MEMBER.fullmatch(f"hub/{names.USAGE_JOURNAL_FILE}")
    assert " python3 -m gpuhub.services.hubdata /data" in backup.hub_data_backup_command(
        SimpleNamespace(settings=validate({}), name="p"), "hub-image", Path("/tmp/x"), False)


def test_compose_mounts_the_volumes_profiles_and_socket_where_names_says():
    services = COMPOSE["services"]
    assert set(COMPOSE["volumes"]) == {names.HUB_DATA_VOLUME, names.BROKER_DATA_VOLUME,
                                       names.TELEMETRY_VOLUME}
    hub = mounts(services["hub"])
    assert hub[names.HUB_DATA_DIR] == (names.HUB_DATA_VOLUME, "rw")
    # The sampler writes the readings, the hub only reads them.
    assert mounts(services[names.GPU_SAMPLER_SERVICE]) == {
        names.TELEMETRY_DIR: (names.TELEMETRY_VOLUME, "rw")}
    assert hub[names.TELEMETRY_DIR] == (names.TELEMETRY_VOLUME, "ro")
    assert names.GPU_SAMPLES_FILE.startswith(names.TELEMETRY_DIR + "/")
    # PROFILES_FILE, read-only, where the hub and the broker read it.
    broker = mounts(services[names.DOCKER_BROKER_SERVICE])
    profiles = ("${PROFILES_FILE:-./jupyterhub/profiles.yaml}", "ro")
    assert hub[names.HUB_PROFILES_PATH] == broker[names.HUB_PROFILES_PATH] == profiles
    assert str(hubconfig.PROFILES_PATH) == names.HUB_PROFILES_PATH
    # The socket: the broker's, or the hub's with docker-compose.docker-socket.yml.
    assert broker[names.DOCKER_SOCKET_MOUNT][1] == "ro"
    assert list(mounts(SOCKET["services"]["hub"])) == [names.DOCKER_SOCKET_MOUNT]
    assert str(hubconfig.HUB_DOCKER_SOCKET) == names.DOCKER_SOCKET_MOUNT
    # The broker's own state: mounted by the broker alone, on a folder its image makes
    # root's only (the broker has no capability to write anybody else's).
    assert broker[names.BROKER_DATA_DIR] == (names.BROKER_DATA_VOLUME, "rw")
    assert [name for name, service in services.items()
            if any(source == names.BROKER_DATA_VOLUME for source, _ in mounts(service).values())
            ] == [names.DOCKER_BROKER_SERVICE]
    assert ("RUN", f"install -d -m 0700 {names.BROKER_DATA_DIR}") in instructions(
        ROOT / "jupyterhub" / "docker-proxy" / "Dockerfile")


def test_compose_hands_the_hub_and_proxy_the_token_secrets_names_defines():
    tokens = [names.PROXY_TOKEN_SECRET, names.METRICS_TOKEN_SECRET]
    assert sorted(COMPOSE["secrets"]) == sorted(tokens)
    assert COMPOSE["services"]["hub"]["secrets"] == tokens
    assert COMPOSE["services"]["proxy"]["secrets"] == [names.PROXY_TOKEN_SECRET]
    # The proxy reads its token where compose mounts it; in swarm mode as well.
    token = f'CONFIGPROXY_AUTH_TOKEN="$$(cat {names.HUB_SECRETS_DIR}/{names.PROXY_TOKEN_SECRET})"'
    assert " ".join(COMPOSE["services"]["proxy"]["command"]).startswith(
        f"sh -c {token} exec configurable-http-proxy ")
    assert swarm.PROXY_COMMAND[2].startswith(f"{token} exec configurable-http-proxy ")
    # ... from the files under SECRETS_DIR that `invoke up` makes (Project.ensure_secret).
    assert {name: COMPOSE["secrets"][name]["file"] for name in tokens} == {
        names.PROXY_TOKEN_SECRET: f"${{SECRETS_DIR:-./.secrets}}/{PROJECT}-{names.PROXY_TOKEN_FILE}",
        names.METRICS_TOKEN_SECRET: f"${{SECRETS_DIR:-./.secrets}}/{PROJECT}-{names.METRICS_TOKEN_FILE}"}


def test_the_login_file_hands_the_hub_the_directory_secrets_names_defines():
    login = [names.LDAP_BIND_PASSWORD_SECRET, names.LDAP_CA_SECRET,
             names.OIDC_CLIENT_SECRET_SECRET, names.OIDC_CA_SECRET]
    assert sorted(LOGIN["secrets"]) == sorted(login)
    assert LOGIN["services"]["hub"]["secrets"] == login
    assert LOGIN["networks"]["directory"]["name"] == names.directory_network(PROJECT)


def test_the_tls_file_hands_the_proxy_the_certificate_and_key_where_the_hub_says():
    tls = [names.TLS_CERT_SECRET, names.TLS_KEY_SECRET]
    assert sorted(TLS["secrets"]) == sorted(tls)
    proxy = TLS["services"]["proxy"]
    assert proxy["secrets"] == [names.PROXY_TOKEN_SECRET, *tls]
    assert proxy["environment"]["GPUHUB_PROXY_TLS_ARGS"] == (
        f"--ssl-cert={hubconfig.PROXY_TLS_CERT} --ssl-key={hubconfig.PROXY_TLS_KEY}")
    assert hubconfig.PROXY_TLS_CERT == f"{names.HUB_SECRETS_DIR}/{names.TLS_CERT_SECRET}"


def test_the_lab_firewall_names_the_labs_bridge_as_compose_and_names_do():
    """labfirewall.py runs alone in its image, without names.py: its default is checked here."""
    bridge = f"${{GPUHUB_LABS_BRIDGE:-{names.labs_network(PROJECT)}}}"
    service = COMPOSE["services"][names.LAB_FIREWALL_SERVICE]
    assert service["environment"]["GPUHUB_LABS_BRIDGE"] == bridge
    assert COMPOSE["networks"]["labs"]["driver_opts"]["com.docker.network.bridge.name"] == bridge
    # Without GPUHUB_LABS_BRIDGE (compose by hand), a name that fits is the network's.
    for project in ("gpuhub", "lab-a", "p" * (names.IFNAMSIZ - len("-labs"))):
        assert names.bridge_name(project) == names.labs_network(project)


def test_the_hub_image_keeps_the_hubs_files_where_names_says():
    steps = instructions(ROOT / "jupyterhub" / "Dockerfile")
    assert ("WORKDIR", names.HUB_DIR) in steps
    assert ("COPY", f"jupyterhub/templates {names.HUB_TEMPLATES_DIR}") in steps
    assert str(hubconfig.TEMPLATES) == names.HUB_TEMPLATES_DIR


def test_the_lab_firewall_image_runs_the_script_where_names_says_and_checks_its_status_file():
    steps = instructions(LAB_FIREWALL_IMAGE)
    assert ("COPY", f"gpuhub/labfirewall/service.py {names.LAB_FIREWALL_SCRIPT}") in steps
    assert [json.loads(args) for step, args in steps if step == "CMD"] == [
        ["python3", names.LAB_FIREWALL_SCRIPT, "run"]]
    assert ("COPY", f"gpuhub/services/healthcheck.py {names.SERVICE_HEALTHCHECK_SCRIPT}") in steps
    [healthcheck] = [args for step, args in steps if step == "HEALTHCHECK"]
    probe = json.loads(healthcheck.partition(" CMD ")[2])
    assert probe[3] == names.SERVICE_HEALTHCHECK_SCRIPT, probe
    assert probe[-3:] == ["--fresh", labfirewall.STATUS_FILE, "20"], probe


def test_lab_memory_runs_its_script_from_that_image_and_checks_its_status_file():
    from gpuhub.labfirewall import labmemory

    assert ("COPY", f"gpuhub/labfirewall/labmemory.py {names.LAB_MEMORY_SCRIPT}") in instructions(
        LAB_FIREWALL_IMAGE)
    service = COMPOSE["services"][names.LAB_MEMORY_SERVICE]
    assert service["command"] == ["python3", names.LAB_MEMORY_SCRIPT, "run"]
    assert service["healthcheck"]["test"][4] == names.SERVICE_HEALTHCHECK_SCRIPT
    assert service["healthcheck"]["test"][-3:] == ["--fresh", labmemory.STATUS_FILE, "20"]
    assert service["volumes"] == [f"/sys/fs/cgroup:{labmemory.CGROUP_ROOT}"]
    assert set(service["environment"]) == {
        names.LABS_CGROUP_PARENT_ENV, names.SERVICES_CGROUP_PARENT_ENV, names.LABS_MEMORY_ENV,
        names.CGROUP_DRIVER_ENV, names.CGROUP_VERSION_ENV}


def test_every_service_and_every_lab_has_a_capped_rotated_log():
    from gpuhub.core.lablimits import LOG_DRIVER, LOG_OPTIONS

    cap = {"driver": LOG_DRIVER, "options": LOG_OPTIONS}
    for name, service in COMPOSE["services"].items():
        assert service.get("logging") == cap, name
