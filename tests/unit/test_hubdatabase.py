"""`invoke up`'s hub database step (gpuhub.tasks.hubdatabase) against a mock Docker host:
which commands run, in which order, and the one line an admin reads. The live upgrades
are tests/integration/test_upgrade.py and test_hub_database_upgrade.py."""

from __future__ import annotations

import json
import re

import pytest
from invoke import Exit, Result

from gpuhub.tasks import hubdatabase
from gpuhub.tasks.project import load
from support.mock_docker import commands, docker_context

HUBDB = re.compile(r".* -m gpuhub\.services\.hubdb (check|dump|upgrade)( > .*)?$")


def state(name: str) -> Result:
    return Result(json.dumps({"state": name, "revision": "4621fec11365",
                              "head": "f460b0348206", "jupyterhub": "6.1.1"}) + "\n")


def hubdb_calls(c) -> list[str]:
    return [m.group(1) for cmd in commands(c) if (m := HUBDB.match(cmd))]


def test_a_database_of_a_newer_jupyterhub_is_refused_before_the_hub_is_touched(env_file):
    env_file()
    project = load()
    c = docker_context((re.compile(r".*hubdb check$"), state("newer")), running=True)
    with pytest.raises(Exit) as failure:
        hubdatabase.bring_to_image(c, project, project.env())
    message = str(failure.value.message)
    assert message.startswith("error: the hub database was written by a newer JupyterHub")
    assert "nothing was changed" in message and "\n" not in message
    assert hubdb_calls(c) == ["check"]
    assert not [cmd for cmd in commands(c) if cmd.endswith(" stop hub")]


def test_a_copy_that_came_out_empty_stops_before_the_migration_and_restarts_the_old_hub(
        env_file, tmp_path, monkeypatch):
    # (A failed migration itself: tests/integration/test_hub_database_upgrade.py, live.)
    env_file()
    project = load()
    copy = tmp_path / "hub-db-copy.sqlite"
    monkeypatch.setattr(hubdatabase, "backup_path", lambda *args: copy)
    c = docker_context((re.compile(r".*hubdb check$"), state("older")), running=True)
    with pytest.raises(Exit) as failure:
        hubdatabase.bring_to_image(c, project, project.env())
    message = str(failure.value.message)
    assert message.startswith("error: cannot copy the hub database before upgrading it")
    assert message.endswith("nothing was changed, the old hub runs again")
    assert hubdb_calls(c) == ["check", "dump"]  # never "upgrade"
    ran = commands(c)
    stop = next(i for i, cmd in enumerate(ran) if cmd.endswith(" stop hub"))
    dump = next(i for i, cmd in enumerate(ran) if "hubdb dump" in cmd)
    again = next(i for i, cmd in enumerate(ran) if " up -d --no-deps --no-recreate --wait" in cmd)
    assert stop < dump < again
    assert oct(copy.stat().st_mode & 0o777) == "0o600"


def test_swarm_mode_refuses_a_migration_with_the_steps_by_hand(env_file):
    env_file()
    project = load()
    c = docker_context((re.compile(r".*hubdb check$"), state("older")), running=True)
    with pytest.raises(Exit) as failure:
        hubdatabase.refuse_unless_current(c, project)
    message = str(failure.value.message)
    assert "in compose mode only; nothing was changed" in message
    assert f"docker service scale {project.hub_service}=0" in message
    assert hubdb_calls(c) == ["check"]
