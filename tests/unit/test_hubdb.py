"""gpuhub.services.hubdb on real SQLite databases made by the pinned JupyterHub's own ORM,
taken back to JupyterHub 5.5's schema with its own alembic scripts (what a 5.5 hub left)."""

from __future__ import annotations

import io
import json
import sqlite3

import jupyterhub.dbutil as dbutil
import pytest
from alembic import command
from alembic.config import Config

from gpuhub.core.hubsqlite import wal_of, write_ahead
from gpuhub.services import hubdb
from jupyterhub import orm

# The last revision JupyterHub 5.5.x knows (its alembic head).
JUPYTERHUB_5_5 = "4621fec11365"


def columns(path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def revision(path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT version_num FROM alembic_version").fetchone()[0]


@pytest.fixture
def hub_5_5(tmp_path):
    """A database as a JupyterHub 5.5 hub leaves it: a user with a token, at 5.5's head."""
    path = tmp_path / "jupyterhub.sqlite"
    url = f"sqlite:///{path}"
    db = orm.new_session_factory(url)()
    user = orm.User(name="alice")
    db.add_all([user, orm.OAuthClient(identifier="jupyterhub")])
    db.commit()
    token = user.new_api_token()
    db.close()
    ini = tmp_path / "alembic.ini"
    dbutil.write_alembic_ini(str(ini), url)
    command.downgrade(Config(str(ini)), JUPYTERHUB_5_5)
    assert revision(path) == JUPYTERHUB_5_5 and "display_name" not in columns(path, "spawners")
    return path, token


def test_a_new_database_is_empty_and_a_fresh_one_current(tmp_path):
    url = f"sqlite:///{tmp_path}/jupyterhub.sqlite"
    assert hubdb.check(url)["state"] == hubdb.EMPTY
    orm.new_session_factory(url)().close()
    found = hubdb.check(url)
    assert found["state"] == hubdb.CURRENT and found["revision"] == found["head"]


def test_a_5_5_database_is_older_and_upgrades_with_its_rows(hub_5_5):
    path, token = hub_5_5
    url = f"sqlite:///{path}"
    assert hubdb.check(url)["state"] == hubdb.OLDER
    done = hubdb.upgrade(url)
    assert done["from"] == JUPYTERHUB_5_5 and done["to"] == hubdb.check(url)["head"]
    assert hubdb.check(url)["state"] == hubdb.CURRENT
    assert "display_name" in columns(path, "spawners")
    db = orm.new_session_factory(url)()  # the pinned JupyterHub opens it
    assert orm.APIToken.find(db, token).user.name == "alice"
    db.close()
    assert not list(path.parent.glob(".jupyterhub.sqlite.upgrading-*"))


def test_a_database_a_hub_still_writes_is_not_upgraded(hub_5_5):
    path, _ = hub_5_5
    write_ahead(path)
    hub = sqlite3.connect(path)  # a hub that still runs: its last commit is in the log
    hub.execute("INSERT INTO groups (name) VALUES ('lab-of-bob')")
    hub.commit()
    try:
        before = path.read_bytes()
        with pytest.raises(SystemExit, match="still in use"):
            hubdb.upgrade(f"sqlite:///{path}")
        assert path.read_bytes() == before and revision(path) == JUPYTERHUB_5_5
    finally:
        hub.close()
    with sqlite3.connect(path) as db:
        assert ("lab-of-bob",) in db.execute("SELECT name FROM groups").fetchall()
    assert not list(path.parent.glob(".jupyterhub.sqlite.upgrading-*"))


def test_a_crashed_hubs_last_commits_are_upgraded_with_the_database(hub_5_5):
    path, _ = hub_5_5
    write_ahead(path)
    hub = sqlite3.connect(path)
    hub.execute("INSERT INTO groups (name) VALUES ('lab-of-bob')")
    hub.commit()
    # The files as a hub that crashed now leaves them: its commit only in the log.
    database, log = path.read_bytes(), wal_of(path).read_bytes()
    hub.close()
    path.write_bytes(database)
    wal_of(path).write_bytes(log)
    assert b"lab-of-bob" not in database
    hubdb.upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        assert ("lab-of-bob",) in db.execute("SELECT name FROM groups").fetchall()
    assert hubdb.check(f"sqlite:///{path}")["state"] == hubdb.CURRENT


def test_a_failing_migration_leaves_the_database_as_it_was(hub_5_5):
    path, _ = hub_5_5
    # The last migration adds spawners.display_name: a column already there makes it fail,
    # after the earlier ones (services.timeout, ...) ran.
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE spawners ADD COLUMN display_name VARCHAR(255)")
    before = path.read_bytes()
    with pytest.raises(Exception, match="display_name"):
        hubdb.upgrade(f"sqlite:///{path}")
    assert path.read_bytes() == before
    assert revision(path) == JUPYTERHUB_5_5 and "timeout" not in columns(path, "services")
    assert not list(path.parent.glob(".jupyterhub.sqlite.upgrading-*"))


def test_a_database_of_a_later_jupyterhub_is_newer_and_never_touched(hub_5_5):
    path, _ = hub_5_5
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = 'a1b2c3d4e5f6'")
    before = path.read_bytes()
    assert hubdb.check(f"sqlite:///{path}")["state"] == hubdb.NEWER
    with pytest.raises(SystemExit, match="newer"):
        hubdb.upgrade(f"sqlite:///{path}")
    assert path.read_bytes() == before


def test_the_dump_of_sqlite_is_a_database_with_the_same_rows(hub_5_5, tmp_path):
    path, token = hub_5_5
    out = io.BytesIO()
    hubdb.dump(f"sqlite:///{path}", out)
    copy = tmp_path / "copy.sqlite"
    copy.write_bytes(out.getvalue())
    assert revision(copy) == JUPYTERHUB_5_5
    with sqlite3.connect(copy) as db:
        assert db.execute("SELECT name FROM users").fetchall() == [("alice",)]


def test_the_command_line_says_one_json_line_or_one_error_line(hub_5_5, monkeypatch, capsys):
    path, _ = hub_5_5
    monkeypatch.setattr(hubdb, "database_url", lambda: f"sqlite:///{path}")
    assert hubdb.main(["check"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == hubdb.OLDER
    path.write_bytes(b"not a database")
    assert hubdb.main(["check"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
