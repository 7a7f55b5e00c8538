"""`invoke up`'s hub database step (gpuhub.tasks.hubdatabase) against a mock Docker host:
which commands run, in which order, and the one line an admin reads. The live upgrades
are tests/integration/test_upgrade.py and test_hub_database_upgrade.py."""

from __future__ import annotations

import json
import re

import pytest
from invoke import Exit, Result

from gpuhub.tasks import composestack, hubdatabase, swarmstack
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
        hubdatabase.bring_to_image(
            c, project, composestack.hub_switch(c, project, project.env()))
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
        hubdatabase.bring_to_image(
            c, project, composestack.hub_switch(c, project, project.env()))
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


def swarm_context(*pairs):
    """A Swarm manager whose hub service exists; the hub image comes from REGISTRY."""
    return docker_context(*pairs, running=True)


def test_swarm_mode_migrates_with_the_image_the_deploy_runs_and_the_hub_scaled_to_zero(
        env_file, tmp_path, monkeypatch):
    env_file(MODE="swarm", REGISTRY="127.0.0.1:5000", SWARM_HOMES=str(tmp_path))
    project = load()
    copy = tmp_path / "hub-db-copy.sqlite"
    monkeypatch.setattr(hubdatabase, "backup_path", lambda *args: copy)
    done = Result('{"from": "4621fec11365", "to": "f460b0348206", "jupyterhub": "6.1.1"}\n')
    c = swarm_context((re.compile(r".*hubdb check$"), state("older")),
                      (re.compile(r".*hubdb dump > .*"), Result()),
                      (re.compile(r".*hubdb upgrade$"), done))
    monkeypatch.setattr(hubdatabase, "run_hubdb", _writing_dump(hubdatabase.run_hubdb, copy))
    upgraded = hubdatabase.bring_to_image(c, project, swarmstack.hub_switch(c, project, 60))
    assert upgraded and "to JupyterHub 6.1.1 (schema f460b0348206)" in upgraded.message
    ran = commands(c)
    image = "127.0.0.1:5000/gpuhub-hub:latest"
    assert ran[0] == f"docker pull {image}"
    assert hubdb_calls(c) == ["check", "dump", "upgrade"]
    assert all(f" {image} python3 -m gpuhub.services.hubdb" in cmd for cmd in ran if "hubdb" in cmd)
    scale = next(i for i, cmd in enumerate(ran)
                 if cmd == f"docker service scale --detach=false {project.hub_service}=0")
    assert scale < next(i for i, cmd in enumerate(ran) if "hubdb dump" in cmd)
    assert not [cmd for cmd in ran if cmd.endswith("=1")]  # the deploy starts the new hub


def test_a_failed_swarm_migration_starts_the_old_hub_again(env_file, tmp_path, monkeypatch):
    env_file(MODE="swarm", REGISTRY="127.0.0.1:5000", SWARM_HOMES=str(tmp_path))
    project = load()
    copy = tmp_path / "hub-db-copy.sqlite"
    monkeypatch.setattr(hubdatabase, "backup_path", lambda *args: copy)
    monkeypatch.setattr(swarmstack, "wait_healthy", lambda *args: None)
    c = swarm_context((re.compile(r".*hubdb check$"), state("older")),
                      (re.compile(r".*hubdb upgrade$"),
                       Result(stderr="sqlite3.OperationalError: attempt to write a readonly "
                                     "database\n", exited=1)))
    monkeypatch.setattr(hubdatabase, "run_hubdb", _writing_dump(hubdatabase.run_hubdb, copy))
    with pytest.raises(Exit) as failure:
        hubdatabase.bring_to_image(c, project, swarmstack.hub_switch(c, project, 60))
    message = str(failure.value.message)
    assert "could not be upgraded (sqlite3.OperationalError: attempt to write a readonly" in message
    assert "it is as it was and the old hub runs again" in message and str(copy) in message
    ran = commands(c)
    assert ran[-1] == f"docker service scale --detach=false {project.hub_service}=1"


def test_a_refused_docker_run_says_why_not_see_docker_run_help():
    from gpuhub.tasks.deployment import stderr_tail
    refused = Result(stderr="Unable to find image 'gpuhub-hub:x' locally\ndocker: Error response "
                            "from daemon: pull access denied for gpuhub-hub.\n"
                            "See 'docker run --help'.\n", exited=125)
    assert stderr_tail(refused) == ("docker: Error response from daemon: pull access denied "
                                    "for gpuhub-hub.")


def _writing_dump(run_hubdb, copy):
    """run_hubdb whose dump writes a copy (the mock host runs nothing)."""
    def run(c, project, image, command, out=None):
        result = run_hubdb(c, project, image, command, out=out)
        if command == "dump":
            copy.write_text("SQLite format 3")
        return result
    return run
