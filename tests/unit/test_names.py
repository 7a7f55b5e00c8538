"""One home for names: the places that are not Python agree with gpuhub/names.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from dockerspawner import DockerSpawner
from traitlets.config import Config

from gpuhub import hubconfig, names
from gpuhub.brokerpolicy import Policy
from gpuhub.settings import validate
from harness import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.mark.parametrize("user", ["bob", "ann-lee", "x_1", "a.b", "zoë", "UPPER"])
def test_user_names_are_escaped_as_dockerspawner_does(user):
    assert names.escape_user(user) == DockerSpawner._escape(user)


def test_compose_names_the_labs_network_and_the_broker_as_names_does():
    network = COMPOSE["networks"]["labs"]
    assert network["name"] == names.labs_network("${COMPOSE_PROJECT_NAME:-gpuhub}")
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
    from gpuhub import usage
    from gpuhub.tasks import backup

    assert usage.DEFAULT_JOURNAL == hubconfig.DATA_DIR / names.USAGE_JOURNAL_FILE
    assert f"hub-data:{hubconfig.DATA_DIR}" in COMPOSE["services"]["hub"]["volumes"]
    assert backup.ARCHIVE_MEMBER.fullmatch(f"hub/{names.USAGE_JOURNAL_FILE}")
    assert " python3 -m gpuhub.hubdata /data" in backup.hub_data_backup_command(
        SimpleNamespace(settings=validate({}), name="p"), Path("/tmp/x"), False)
