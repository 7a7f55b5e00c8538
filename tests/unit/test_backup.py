"""`invoke backup` / `invoke restore` with MockContext: exact commands, archive, refusals.

Docker is a double here: the helper-container commands that write or read a file
(``> PATH`` / ``< PATH``) are given a side effect that does what the real one would.
"""

import io
import json
import re
import shlex
import sqlite3
import stat
import tarfile
from pathlib import Path
from unittest.mock import DEFAULT

import pytest
from invoke import Exit, MockContext, Result

import tasks as tasks_py
from gpuhub.tasks import backup as bk
from gpuhub.tasks import project as project_mod
from support.mock_docker import COMPOSE_VERSION, DOCKER_INFO, commands, docker_context
from support.tasks import assert_one_line_error, compose

ROOT = project_mod.ROOT
PROJECT = "bktest"
HUB_IMAGE = "gpuhub-hub:test"
HUB_DATA = f"{PROJECT}_hub-data"
ALICE_VOLUME = f"{PROJECT}-home-alice"
CAROL_VOLUME = f"{PROJECT}-home-carol"  # carol was deleted, her work folder kept
# What `docker volume ls --filter name=bktest-home-` lists: the filter matches anywhere
# in a name, so other projects' volumes come too.
LISTED_VOLUMES = f"{ALICE_VOLUME}\n{CAROL_VOLUME}\nold{PROJECT}-home-dave\nx-{PROJECT}-home-erin\n"
GIT = f"git -C {ROOT} describe --always --dirty"


@pytest.fixture
def env_file(env_file):
    """The tasks' settings file (tests/unit/conftest.py's), with project and image preset."""

    def write(**settings):
        return env_file(**{"COMPOSE_PROJECT_NAME": PROJECT, "HUB_IMAGE": HUB_IMAGE, **settings})

    write()
    return write


def context(*pairs, running=False) -> MockContext:
    """Docker answers; the hub is down unless told (see support.mock_docker)."""
    return docker_context(*pairs, running=running, **{GIT: Result("b8bdcc6-dirty\n")})





def redirect_target(command: str, op: str) -> str:
    words = shlex.split(command)
    return words[words.index(op) + 1]


def hub_database(path):
    """A small JupyterHub-shaped database: users, and a lab that was running."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, admin BOOLEAN);
        CREATE TABLE servers (id INTEGER PRIMARY KEY, ip TEXT);
        CREATE TABLE spawners (id INTEGER PRIMARY KEY, user_id INTEGER, server_id INTEGER,
                               state TEXT);
        INSERT INTO users VALUES (1, 'admin', 1), (2, 'alice', 0);
        INSERT INTO servers VALUES (1, 'old-lab'), (2, 'gpus-service');
        INSERT INTO spawners VALUES (1, 2, 1, '{"object_id": "c0ffee"}');
    """)
    db.commit()
    db.close()
    return path


def fake_hub_data_tar(dest, tmp_path, include_secrets: bool, usage_records: bytes | None = None):
    """What gpuhub.services.hubdata prints: hub.json, the database copy, the usage records (if the
    hub wrote any), the cookie secret."""
    db = hub_database(tmp_path / "source.sqlite")
    info = json.dumps({"jupyterhub_version": "5.4.4", "users": [
        {"name": "admin", "admin": True, "volume": "home-admin"},
        {"name": "alice", "admin": False, "volume": "home-alice"}]}).encode()
    with tarfile.open(dest, "w") as tar:
        member = tarfile.TarInfo("hub.json")
        member.size = len(info)
        tar.addfile(member, io.BytesIO(info))
        tar.add(db, "jupyterhub.sqlite")
        if usage_records is not None:
            member = tarfile.TarInfo("usage.jsonl")
            member.size = len(usage_records)
            tar.addfile(member, io.BytesIO(usage_records))
        if include_secrets:
            secret = b"c00k1e-s3cret\n"
            member = tarfile.TarInfo("jupyterhub_cookie_secret")
            member.size = len(secret)
            tar.addfile(member, io.BytesIO(secret))


def fake_volume_tar(dest, volume):
    with tarfile.open(dest, "w") as tar:
        data = f"hello from {volume}\n".encode()
        member = tarfile.TarInfo("./x.txt")
        member.size, member.uid = len(data), 1000
        tar.addfile(member, io.BytesIO(data))


def docker_double(c, tmp_path, seen=None, usage_records=None):
    """Commands that write or read a file do so, as the helper containers would."""
    def effect(command, **kwargs):
        if " python3 -m gpuhub.services.hubdata " in command and " > " in command:
            fake_hub_data_tar(redirect_target(command, ">"), tmp_path,
                              " --include-secrets > " in command, usage_records)
        elif " tar -C /v --numeric-owner -cf - . > " in command:
            fake_volume_tar(redirect_target(command, ">"), command.split(" -v ")[1].split(":")[0])
        elif " -xf - < " in command and seen is not None:
            with tarfile.open(redirect_target(command, "<")) as tar:
                seen[command.split(" -v ")[1].split(":")[0]] = {
                    m.name: (m.mode, m.uid, tar.extractfile(m).read()) for m in tar}
        return DEFAULT
    c.run.side_effect = effect
    return c


def hub_data_cmd(staging, include_secrets=False):
    return (f"docker run --rm --network none -v {HUB_DATA}:/data {HUB_IMAGE} "
            "python3 -m gpuhub.services.hubdata /data" + (" --include-secrets" if include_secrets else "")
            + f" > {staging / 'hub-data.tar'}")


def volume_cmd(staging, suffix="home-alice"):
    return (f"docker run --rm --network none -v {PROJECT}-{suffix}:/v:ro {HUB_IMAGE} "
            f"tar -C /v --numeric-owner -cf - . > {staging / 'volumes' / (suffix + '.tar')}")


@pytest.fixture
def staging(tmp_path, monkeypatch):
    """Pin the staging folder name, so commands can be compared exactly."""
    made = []

    def mkdtemp(prefix="", dir=None):
        path = (tmp_path / "staging" if dir is None else Path(dir)) / (prefix + "x")
        path.mkdir(parents=True)
        made.append(path)
        return str(path)

    monkeypatch.setattr(bk.tempfile, "mkdtemp", mkdtemp)
    return made


def make_backup(tmp_path, staging, volumes=LISTED_VOLUMES, usage_records=None, **flags):
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / "b.tar.gz"
    c = docker_double(context((f"docker volume ls -q --filter name={PROJECT}-home-",
                               Result(volumes))), tmp_path, usage_records=usage_records)
    bk.backup(c, output=str(out), **flags)
    return c, out


def members(archive) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


# --- the collection ------------------------------------------------------------------

def test_backup_and_restore_are_tasks():
    assert {"backup", "restore"} <= set(tasks_py.ns.task_names)


# --- settings without secrets ----------------------------------------------------------

def test_blank_secrets_removes_credentials_and_keeps_the_rest():
    text = ("# Hub database\nDATABASE_URL=postgresql://hub:pw@db/hub\nHUB_PORT=8000\n"
            "GPUHUB_SMTP_PASSWORD='hunter2'\nexport GPUHUB_API_TOKEN=abc\n"
            "SECRETS_DIR=/srv/secrets\nEXTRA_CA_CERTS=/etc/ca.pem\nGPUHUB_EMPTY_TOKEN=\n")
    blanked_text, blanked = bk.blank_secrets(text)
    assert blanked == ["DATABASE_URL", "GPUHUB_SMTP_PASSWORD", "GPUHUB_API_TOKEN"]
    for secret in ("pw@db", "hunter2", "abc"):
        assert secret not in blanked_text
    assert "DATABASE_URL=\n" in blanked_text
    assert "HUB_PORT=8000\n" in blanked_text
    assert "SECRETS_DIR=/srv/secrets\n" in blanked_text
    assert "EXTRA_CA_CERTS=/etc/ca.pem\n" in blanked_text
    assert "GPUHUB_EMPTY_TOKEN=\n" in blanked_text
    assert "# Hub database\n" in blanked_text


# --- backup ------------------------------------------------------------------------------

def test_backup_writes_one_archive_with_the_exact_commands(env_file, tmp_path, staging, capsys):
    path = env_file(DATABASE_URL="", GPUHUB_SMTP_PASSWORD="hunter2")
    c, out = make_backup(tmp_path, staging, with_work_volumes=True)
    (stage,) = staging
    assert commands(c) == [
        DOCKER_INFO, COMPOSE_VERSION,
        f"docker volume inspect {HUB_DATA}",
        f"docker image inspect {HUB_IMAGE}",
        hub_data_cmd(stage),
        f"docker volume ls -q --filter name={PROJECT}-home-",
        f"docker ps -q --filter label=gpuhub.project={PROJECT}",
        volume_cmd(stage, "home-alice"),
        volume_cmd(stage, "home-carol"),
        GIT,
    ]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not stage.exists(), "the staging folder must be removed"
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.tar.gz"]
    files = members(out)
    assert list(files) == ["manifest.json", "hub/jupyterhub.sqlite", "profiles.yaml",
                           "settings.env", "volumes/home-alice.tar", "volumes/home-carol.tar"]
    assert files["settings.env"].decode() == bk.blank_secrets(path.read_text())[0]
    assert b"hunter2" not in files["settings.env"]
    manifest = json.loads(files["manifest.json"])
    assert manifest["project"] == PROJECT
    assert manifest["gpuhub_commit"] == "b8bdcc6-dirty"
    assert manifest["jupyterhub_version"] == "5.4.4"
    assert manifest["users"] == [{"name": "admin", "admin": True},
                                 {"name": "alice", "admin": False}]
    assert manifest["volumes"] == [
        {"user": "alice", "path": "volumes/home-alice.tar", "volume": "home-alice"},
        {"user": None, "path": "volumes/home-carol.tar", "volume": "home-carol"}]
    assert manifest["includes_cookie_secret"] is False
    assert manifest["blanked_settings"] == ["GPUHUB_SMTP_PASSWORD"]
    assert [e["path"] for e in manifest["contents"]] == list(files)[1:]
    out = capsys.readouterr().out
    assert "work folders: 2, 1 of them of deleted users; cookie secret: not included" in out


def test_backup_includes_the_cookie_secret_only_when_asked(env_file, tmp_path, staging):
    c, out = make_backup(tmp_path, staging, include_secrets=True)
    (stage,) = staging
    assert hub_data_cmd(stage, include_secrets=True) in commands(c)
    assert not [cmd for cmd in commands(c) if "volume ls" in cmd], "no work volumes asked for"
    files = members(out)
    assert files["hub/jupyterhub_cookie_secret"] == b"c00k1e-s3cret\n"
    assert json.loads(files["manifest.json"])["includes_cookie_secret"] is True


USAGE_RECORDS = (b'{"event":"start","lab":"c0ffee","user":"alice","profile":"gpu-1",'
                 b'"gpus":["0"],"at":"2026-05-01T10:00:00+00:00"}\n')


def test_backup_includes_the_usage_records(env_file, tmp_path, staging):
    _, out = make_backup(tmp_path, staging, usage_records=USAGE_RECORDS)
    files = members(out)
    assert files["hub/usage.jsonl"] == USAGE_RECORDS
    contents = json.loads(files["manifest.json"])["contents"]
    assert [e["path"] for e in contents if e["path"].startswith("hub/")] == [
        "hub/jupyterhub.sqlite", "hub/usage.jsonl"]


def run_hub_data_script(tmp_path, *args) -> dict[str, bytes]:
    """gpuhub.services.hubdata itself, with a folder standing in for the hub-data volume."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "gpuhub.services.hubdata", str(tmp_path / "data"), *args],
                         capture_output=True, check=True, cwd=ROOT).stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def real_hub_database(path):
    """A database as JupyterHub makes it (its ORM, its schema version), with two users."""
    from jupyterhub import orm

    db = orm.new_session_factory(f"sqlite:///{path}")()
    db.add_all([orm.User(name="admin", admin=True), orm.User(name="ann.lee", admin=False)])
    db.commit()
    db.close()


def test_hub_data_script_lists_the_users_and_their_volumes_from_jupyterhubs_orm(tmp_path):
    (tmp_path / "data").mkdir()
    real_hub_database(tmp_path / "data" / "jupyterhub.sqlite")
    (tmp_path / "data" / "jupyterhub_cookie_secret").write_bytes(b"c00k1e\n")
    files = run_hub_data_script(tmp_path)
    assert list(files) == ["hub.json", "jupyterhub.sqlite"]  # no cookie secret unless asked
    info = json.loads(files["hub.json"])
    assert info["users"] == [{"name": "admin", "admin": True, "volume": "home-admin"},
                             {"name": "ann.lee", "admin": False, "volume": "home-ann-2elee"}]
    assert run_hub_data_script(tmp_path, "--include-secrets")["jupyterhub_cookie_secret"] == b"c00k1e\n"


def test_hub_data_script_adds_the_usage_records_when_the_hub_wrote_any(tmp_path):
    (tmp_path / "data").mkdir()
    real_hub_database(tmp_path / "data" / "jupyterhub.sqlite")
    assert list(run_hub_data_script(tmp_path)) == ["hub.json", "jupyterhub.sqlite"]
    (tmp_path / "data" / bk.names.USAGE_JOURNAL_FILE).write_bytes(USAGE_RECORDS)
    files = run_hub_data_script(tmp_path)
    assert list(files) == ["hub.json", "jupyterhub.sqlite", "usage.jsonl"]
    assert files["usage.jsonl"] == USAGE_RECORDS


def test_backup_warns_when_labs_run(env_file, tmp_path, staging, capsys):
    out = tmp_path / "b.tar.gz"
    c = docker_double(context(
        (f"docker ps -q --filter label=gpuhub.project={PROJECT}", Result("abc\n"))), tmp_path)
    bk.backup(c, output=str(out), with_work_volumes=True)
    assert "warning: 1 lab(s) are running" in capsys.readouterr().err


def test_backup_archives_every_work_volume_of_the_project_deleted_users_too(
        env_file, tmp_path, staging):
    # a-5fb: DockerSpawner's escaping of a deleted user "a_b".
    c, out = make_backup(tmp_path, staging, volumes=LISTED_VOLUMES + f"{PROJECT}-home-a-5fb\n",
                         with_work_volumes=True)
    (stage,) = staging
    archived = [cmd for cmd in commands(c) if " -cf - . > " in cmd]
    assert archived == [volume_cmd(stage, "home-a-5fb"), volume_cmd(stage, "home-alice"),
                        volume_cmd(stage, "home-carol")], "never other projects' volumes"
    manifest = json.loads(members(out)["manifest.json"])
    assert [(v["volume"], v["user"]) for v in manifest["volumes"]] == [
        ("home-a-5fb", None), ("home-alice", "alice"), ("home-carol", None)]


def test_backup_stops_when_docker_cannot_list_the_work_volumes(env_file, tmp_path, staging):
    out = tmp_path / "out" / "b.tar.gz"
    out.parent.mkdir()
    c = docker_double(context((f"docker volume ls -q --filter name={PROJECT}-home-", Result(
        stderr="permission denied while trying to connect to the Docker daemon\n", exited=1))),
        tmp_path)
    with pytest.raises(Exit) as info:
        bk.backup(c, output=str(out), with_work_volumes=True)
    assert_one_line_error(info, "could not list the work volumes: permission denied")
    assert list(out.parent.iterdir()) == [], "no archive without the work folders asked for"


@pytest.mark.parametrize("url, fragment", [
    ("postgresql://hub:pw@db/hub", "pg_dump"),
    ("sqlite:////tmp/elsewhere.sqlite", "outside the hub-data volume"),
])
def test_backup_refuses_other_databases_before_docker(env_file, tmp_path, url, fragment):
    env_file(DATABASE_URL=url)
    c = context()
    with pytest.raises(Exit) as info:
        bk.backup(c, output=str(tmp_path / "b.tar.gz"))
    assert_one_line_error(info, fragment)
    assert "pw@db" not in info.value.message
    assert commands(c) == []


def test_backup_never_overwrites_an_archive(env_file, tmp_path):
    out = tmp_path / "b.tar.gz"
    out.write_text("precious")
    c = context()
    with pytest.raises(Exit) as info:
        bk.backup(c, output=str(out))
    assert_one_line_error(info, "already exists", "--output")
    assert commands(c) == [] and out.read_text() == "precious"


def test_backup_of_a_project_that_never_ran(env_file, tmp_path):
    c = context((f"docker volume inspect {HUB_DATA}", Result(exited=1)))
    with pytest.raises(Exit) as info:
        bk.backup(c, output=str(tmp_path / "b.tar.gz"))
    assert_one_line_error(info, f"project '{PROJECT}' has no hub-data volume",
                          "COMPOSE_PROJECT_NAME")
    assert commands(c)[-1] == f"docker volume inspect {HUB_DATA}"


def test_backup_failure_leaves_no_archive_and_no_staging(env_file, tmp_path, staging):
    out = tmp_path / "out" / "b.tar.gz"
    out.parent.mkdir()
    c = context((re.compile(r".* python3 -m gpuhub.services.hubdata "), Result(
        stderr="error: the hub-data volume has no jupyterhub.sqlite\n", exited=1)))
    with pytest.raises(Exit) as info:
        bk.backup(c, output=str(out))
    assert info.value.message == ("error: could not copy the hub database: the hub-data "
                                  "volume has no jupyterhub.sqlite")
    assert list(out.parent.iterdir()) == []


def test_backup_without_the_hub_image(env_file, tmp_path):
    c = context((f"docker image inspect {HUB_IMAGE}", Result(exited=1)))
    with pytest.raises(Exit) as info:
        bk.backup(c, output=str(tmp_path / "b.tar.gz"))
    assert_one_line_error(info, HUB_IMAGE, "invoke build")


# --- restore -----------------------------------------------------------------------------

@pytest.fixture
def archive(env_file, tmp_path, staging):
    """A backup of project bktest (admin, alice; the work folders of alice and deleted carol)."""
    _, out = make_backup(tmp_path, staging, with_work_volumes=True)
    staging.clear()
    return out


@pytest.fixture
def target(env_file):
    """Restore into another project, as on a new machine."""
    env_file(COMPOSE_PROJECT_NAME="newhub")


NEW_HUB_DATA = "newhub_hub-data"
NEW_ALICE = "newhub-home-alice"
NEW_CAROL = "newhub-home-carol"


def no_such_volume(name: str) -> Result:
    """What Docker answers `docker volume inspect` of a volume that does not exist."""
    return Result(stderr=f"Error: No such volume: {name}\n", exited=1)


def fresh_target(*pairs, running=False):
    return context((f"docker volume inspect {NEW_HUB_DATA}", Result(exited=1)),
                   (f"docker volume inspect {NEW_ALICE}", no_such_volume(NEW_ALICE)),
                   (f"docker volume inspect {NEW_CAROL}", no_such_volume(NEW_CAROL)), *pairs,
                   running=running)


def test_restore_fills_fresh_volumes_of_the_target_project(
        archive, target, tmp_path, staging, capsys):
    seen = {}
    c = docker_double(fresh_target(), tmp_path, seen)
    bk.restore(c, str(archive))
    (stage,) = staging
    hub_tar = stage / "hub-data.tar"
    alice_tar, carol_tar = stage / "volumes" / "home-alice.tar", stage / "volumes" / "home-carol.tar"
    assert commands(c)[2:] == [
        compose(tmp_path / "test.env", "ps --status running --quiet hub"),
        f"docker image inspect {HUB_IMAGE}",
        f"docker volume inspect {NEW_HUB_DATA}",
        f"docker volume inspect {NEW_ALICE}",
        f"docker volume inspect {NEW_CAROL}",
        "docker volume create --label com.docker.compose.project=newhub "
        f"--label com.docker.compose.volume=hub-data {NEW_HUB_DATA}",
        f"docker run --rm -i --network none -v {NEW_HUB_DATA}:/v {HUB_IMAGE} "
        f"tar -C /v --numeric-owner -xf - < {hub_tar}",
        f"docker volume create {NEW_ALICE}",
        f"docker run --rm -i --network none -v {NEW_ALICE}:/v {HUB_IMAGE} "
        f"tar -C /v --numeric-owner -xf - < {alice_tar}",
        f"docker volume create {NEW_CAROL}",
        f"docker run --rm -i --network none -v {NEW_CAROL}:/v {HUB_IMAGE} "
        f"tar -C /v --numeric-owner -xf - < {carol_tar}",
    ]
    assert not stage.exists()
    (mode, uid, data), = seen[NEW_HUB_DATA].values()
    assert list(seen[NEW_HUB_DATA]) == ["jupyterhub.sqlite"]
    assert (mode, uid) == (0o600, 0)
    db_copy = tmp_path / "restored.sqlite"
    db_copy.write_bytes(data)
    db = sqlite3.connect(db_copy)
    assert db.execute("SELECT server_id, state FROM spawners").fetchall() == [(None, None)]
    assert db.execute("SELECT ip FROM servers").fetchall() == [("gpus-service",)]
    db.close()
    assert seen[NEW_ALICE]["./x.txt"][1:] == (1000, f"hello from {ALICE_VOLUME}\n".encode())
    assert seen[NEW_CAROL]["./x.txt"][1:] == (1000, f"hello from {CAROL_VOLUME}\n".encode())
    out = capsys.readouterr().out
    assert f"restoring the work folder of a deleted user into {NEW_CAROL}" in out
    assert ("restored 2 user(s) (admin, alice) and 2 work folder(s) from project 'bktest' "
            "into project 'newhub'; start it with `invoke up`") in out
    assert "everyone logs in again" in out


def test_restore_puts_the_usage_records_back(env_file, tmp_path, staging):
    _, archive = make_backup(tmp_path, staging, usage_records=USAGE_RECORDS,
                             with_work_volumes=True)
    staging.clear()
    env_file(COMPOSE_PROJECT_NAME="newhub")
    seen = {}
    bk.restore(docker_double(fresh_target(), tmp_path, seen), str(archive))
    assert list(seen[NEW_HUB_DATA]) == ["jupyterhub.sqlite", "usage.jsonl"]
    mode, uid, data = seen[NEW_HUB_DATA]["usage.jsonl"]
    assert (mode, uid, data) == (0o600, 0, USAGE_RECORDS)


def test_restore_into_an_empty_hub_data_volume_removes_only_what_it_brought(
        env_file, tmp_path, staging):
    _, archive = make_backup(tmp_path, staging, usage_records=USAGE_RECORDS,
                             with_work_volumes=True)
    staging.clear()
    env_file(COMPOSE_PROJECT_NAME="newhub")
    has_db = (f"docker run --rm --network none -v {NEW_HUB_DATA}:/v:ro {HUB_IMAGE} "
              "test -e /v/jupyterhub.sqlite -o -e /v/jupyterhub.sqlite-wal")
    c = docker_double(fresh_target(
        (f"docker volume inspect {NEW_HUB_DATA}", Result()), (has_db, Result(exited=1)),
        (re.compile(rf".* -v {NEW_ALICE}:/v .* -xf - < .*"),
         Result(stderr="tar: write error: No space left on device\n", exited=2))), tmp_path)
    with pytest.raises(Exit):
        bk.restore(c, str(archive))
    assert commands(c)[-1] == (f"docker run --rm --network none -v {NEW_HUB_DATA}:/v "
                               f"{HUB_IMAGE} rm -f /v/jupyterhub.sqlite /v/usage.jsonl")


def test_restore_refuses_a_running_hub(archive, target):
    c = fresh_target(running=True)
    with pytest.raises(Exit) as info:
        bk.restore(c, str(archive))
    assert_one_line_error(info, "is running", "invoke down")
    assert not [cmd for cmd in commands(c) if "volume create" in cmd or "docker run" in cmd]


def test_restore_refuses_a_project_that_has_a_database(archive, target):
    has_db = (f"docker run --rm --network none -v {NEW_HUB_DATA}:/v:ro {HUB_IMAGE} "
              "test -e /v/jupyterhub.sqlite -o -e /v/jupyterhub.sqlite-wal")
    c = context((f"docker volume inspect {NEW_HUB_DATA}", Result()), (has_db, Result()))
    with pytest.raises(Exit) as info:
        bk.restore(c, str(archive))
    assert_one_line_error(info, "already has a hub database", "restore never overwrites",
                          "COMPOSE_PROJECT_NAME", f"docker volume rm {NEW_HUB_DATA}")
    assert commands(c)[-1] == has_db


def test_restore_uses_an_empty_hub_data_volume(archive, target, tmp_path, staging):
    has_db = (f"docker run --rm --network none -v {NEW_HUB_DATA}:/v:ro {HUB_IMAGE} "
              "test -e /v/jupyterhub.sqlite -o -e /v/jupyterhub.sqlite-wal")
    c = docker_double(fresh_target((f"docker volume inspect {NEW_HUB_DATA}", Result()),
                                   (has_db, Result(exited=1))), tmp_path)
    bk.restore(c, str(archive))
    assert not [cmd for cmd in commands(c) if "volume create --label" in cmd]


def test_restore_refuses_an_existing_work_volume(archive, target):
    c = fresh_target((f"docker volume inspect {NEW_ALICE}", Result()))
    with pytest.raises(Exit) as info:
        bk.restore(c, str(archive))
    assert_one_line_error(info, f"volume {NEW_ALICE} (work folder of alice) already exists")
    assert not [cmd for cmd in commands(c) if "volume create" in cmd]


def test_restore_refuses_when_docker_cannot_say_whether_a_work_volume_exists(archive, target):
    c = fresh_target((f"docker volume inspect {NEW_ALICE}",
                      Result(stderr="permission denied while trying to connect\n", exited=1)))
    with pytest.raises(Exit) as info:
        bk.restore(c, str(archive))
    assert_one_line_error(info, f"could not check for a kept work volume {NEW_ALICE}",
                          "permission denied")
    assert not [cmd for cmd in commands(c) if "volume create" in cmd]


def test_restore_removes_what_it_made_when_a_step_fails(archive, target, tmp_path):
    c = docker_double(fresh_target(
        (re.compile(rf".* -v {NEW_ALICE}:/v .* -xf - < .*"),
         Result(stderr="tar: write error: No space left on device\n", exited=2))), tmp_path)
    with pytest.raises(Exit) as info:
        bk.restore(c, str(archive))
    assert info.value.message == (
        f"error: could not fill work volume {NEW_ALICE}: tar: write error: No space left on "
        "device; what this restore had made is removed again")
    assert commands(c)[-2:] == [f"docker volume rm {NEW_ALICE}",
                                f"docker volume rm {NEW_HUB_DATA}"]


def test_restore_refuses_a_damaged_archive_before_docker(archive, target, tmp_path):
    damaged = tmp_path / "damaged.tar.gz"
    with tarfile.open(archive, "r:gz") as src, tarfile.open(damaged, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read()
            if member.name == "volumes/home-alice.tar":
                data = data.replace(b"hello", b"HELLO")
            dst.addfile(member, io.BytesIO(data))
    c = fresh_target()
    with pytest.raises(Exit) as info:
        bk.restore(c, str(damaged))
    assert_one_line_error(info, "not a usable gpuhub backup",
                          "volumes/home-alice.tar does not match its checksum",
                          "nothing was changed")
    assert commands(c) == []


@pytest.mark.parametrize("content", [b"not a tarball", b""])
def test_restore_refuses_what_is_not_a_backup(target, tmp_path, content):
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(content)
    c = fresh_target()
    with pytest.raises(Exit) as info:
        bk.restore(c, str(bogus))
    assert_one_line_error(info, "not a usable gpuhub backup")
    assert commands(c) == []


def test_restore_refuses_members_outside_the_backup_layout(target, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    manifest = json.dumps({"format": bk.FORMAT, "format_version": 1, "contents": [
        {"path": "../etc/passwd", "sha256": "0" * 64}]}).encode()
    with tarfile.open(evil, "w:gz") as tar:
        for name, data in (("manifest.json", manifest), ("../etc/passwd", b"root::0:0")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    with pytest.raises(Exit) as info:
        bk.restore(fresh_target(), str(evil))
    assert_one_line_error(info, "unexpected member '../etc/passwd'")


def rewrite(archive, dest, edit_manifest=lambda manifest: None, rename=None):
    """A copy of ``archive`` with its manifest edited and members renamed."""
    rename = rename or {}
    with tarfile.open(archive, "r:gz") as src, tarfile.open(dest, "w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read()
            if member.name == "manifest.json":
                manifest = json.loads(data)
                edit_manifest(manifest)
                data = json.dumps(manifest).encode()
            member.name, member.size = rename.get(member.name, member.name), len(data)
            dst.addfile(member, io.BytesIO(data))
    return dest


def test_restore_reads_an_archive_that_names_work_folders_by_user(
        env_file, tmp_path, staging):
    """Archives written before deleted users' folders were included: volumes/<user>.tar."""
    _, new = make_backup(tmp_path, staging, volumes=f"{ALICE_VOLUME}\n", with_work_volumes=True)
    staging.clear()

    def by_user(manifest):
        (volume,) = manifest["volumes"]
        volume["path"] = "volumes/alice.tar"
        for entry in manifest["contents"]:
            entry["path"] = entry["path"].replace("volumes/home-alice.tar", "volumes/alice.tar")

    old = rewrite(new, tmp_path / "old.tar.gz", by_user,
                  rename={"volumes/home-alice.tar": "volumes/alice.tar"})
    env_file(COMPOSE_PROJECT_NAME="newhub")
    seen = {}
    c = docker_double(fresh_target(), tmp_path, seen)
    bk.restore(c, str(old))
    (stage,) = staging
    assert (f"docker run --rm -i --network none -v {NEW_ALICE}:/v {HUB_IMAGE} "
            f"tar -C /v --numeric-owner -xf - < {stage / 'volumes' / 'alice.tar'}") in commands(c)
    assert seen[NEW_ALICE]["./x.txt"][2] == f"hello from {ALICE_VOLUME}\n".encode()


def _set(index, key, value):
    def edit(manifest):
        manifest["volumes"][index][key] = value
    return edit


@pytest.mark.parametrize("edit", [
    _set(1, "path", "../../etc/passwd"),                 # not a member of the archive
    _set(1, "path", "profiles.yaml"),                    # a member, but not a work folder
    _set(1, "volume", "home-alice"),                     # twice the same volume
    _set(1, "volume", "home-../../x"),
    _set(1, "volume", "data"),
    _set(0, "user", "Root"),
    lambda manifest: manifest["volumes"][1].pop("volume"),
], ids=["path outside", "path not a volume", "twice", "slash", "not a work volume",
        "bad user", "no volume"])
def test_restore_refuses_odd_work_volume_entries_before_docker(archive, target, tmp_path, edit):
    odd = rewrite(archive, tmp_path / "odd.tar.gz", edit)
    c = fresh_target()
    with pytest.raises(Exit) as info:
        bk.restore(c, str(odd))
    assert_one_line_error(info, "names an odd work volume", "nothing was changed")
    assert commands(c) == []


def test_restore_of_a_missing_file(target, tmp_path):
    with pytest.raises(Exit) as info:
        bk.restore(fresh_target(), str(tmp_path / "nope.tar.gz"))
    assert_one_line_error(info, "no file", "nope.tar.gz")


def test_restore_refuses_a_postgresql_target(archive, env_file):
    env_file(DATABASE_URL="postgresql://hub:pw@db/hub")
    c = fresh_target()
    with pytest.raises(Exit) as info:
        bk.restore(c, str(archive))
    assert_one_line_error(info, "PostgreSQL", "pg_restore")
    assert commands(c) == []


def test_check_database_refuses_a_damaged_database(tmp_path):
    path = tmp_path / "db.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(Exit) as info:
        bk.check_database(path)
    assert_one_line_error(info, "the hub database in the backup is damaged")
