"""The hub database across JupyterHub upgrades: ``python3 -m gpuhub.services.hubdb COMMAND``.

`invoke up` runs it in a throw-away container of the *new* hub image, before
the hub is recreated, so the image that will open the database is the one that judges it:

- ``check``: one JSON line, the database's schema revision against this JupyterHub's:
  ``empty`` (no database yet), ``current``, ``older`` (``upgrade`` will migrate it) or
  ``newer`` (a later JupyterHub wrote it: this one must not open it);
- ``dump``: the whole database on stdout, for the file `invoke up` keeps before it
  migrates: SQLite's own online copy, or (PostgreSQL) every table as JSON lines;
- ``upgrade``: JupyterHub's own migrations (its alembic scripts), all or nothing. SQLite:
  on a copy beside the database, which replaces it only once it is at the new revision;
  PostgreSQL: in one transaction (its DDL is transactional). Any failure leaves the
  database as it was.

Exit status: 0 done, 1 failed (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from gpuhub.core import names
from gpuhub.core.hubsqlite import wal_of
from gpuhub.core.settings import validate

EMPTY, CURRENT, OLDER, NEWER = (names.HUB_DB_EMPTY, names.HUB_DB_CURRENT, names.HUB_DB_OLDER,
                                names.HUB_DB_NEWER)


def database_url(environ=os.environ, data_dir: str = names.HUB_DATA_DIR) -> str:
    return names.hub_database_url(data_dir, validate(environ).database_url)


def sqlite_file(url: str) -> Path | None:
    return Path(url.split(":///", 1)[1]) if url.startswith("sqlite:///") else None


def scripts():
    """JupyterHub's alembic scripts, as this JupyterHub ships them."""
    from alembic.script import ScriptDirectory

    import jupyterhub
    return ScriptDirectory(str(Path(jupyterhub.__file__).parent / "alembic"))


def revision_of(url: str) -> tuple[bool, str | None]:
    """(has tables, the alembic revision stamped in it or None)."""
    from sqlalchemy import create_engine, inspect, text

    path = sqlite_file(url)
    if path is not None and not path.exists():
        return False, None
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            if "alembic_version" not in tables:
                return bool(tables), None
            rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            return True, (rows[0] if rows else None)
    finally:
        engine.dispose()


def check(url: str) -> dict:
    """What the database is to this JupyterHub (see the module's docstring)."""
    from jupyterhub._version import __version__ as jupyterhub_version

    script = scripts()
    head = script.get_current_head()
    has_tables, revision = revision_of(url)
    if not has_tables:
        state = EMPTY
    elif revision == head:
        state = CURRENT
    elif revision is None or _known(script, revision):
        # No stamp: a database from before JupyterHub used alembic; its migrations know it.
        state = OLDER
    else:
        state = NEWER
    return {"state": state, "revision": revision, "head": head,
            "jupyterhub": jupyterhub_version}


def _known(script, revision: str) -> bool:
    from alembic.util import CommandError

    try:
        return script.get_revision(revision) is not None
    except CommandError:  # alembic's "Can't locate revision"
        return False


def dump(url: str, out) -> None:
    """The whole database on ``out`` (binary): see the module's docstring."""
    path = sqlite_file(url)
    if path is not None:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / path.name
            online_copy(path, copy)
            with open(copy, "rb") as f:
                shutil.copyfileobj(f, out)
        return
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            for table in meta.sorted_tables:
                for row in conn.execute(table.select()).mappings():
                    line = {"table": table.name, "row": dict(row)}
                    out.write(json.dumps(line, default=str).encode() + b"\n")
    finally:
        engine.dispose()


def online_copy(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent copy even while a hub writes."""
    src, dst = sqlite3.connect(source, timeout=60), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def migrate(url: str) -> None:
    """JupyterHub's migrations to its head revision, in one transaction."""
    import jupyterhub.dbutil as dbutil
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    with tempfile.TemporaryDirectory() as tmp:
        ini = os.path.join(tmp, "alembic.ini")
        dbutil.write_alembic_ini(ini, url)
        config = Config(ini)
        engine = create_engine(url)
        try:
            # An outer transaction: alembic sees it and runs every migration inside it (no
            # commit per migration), so a failure rolls all of them back where the DDL is
            # transactional (PostgreSQL; SQLite is migrated on a copy instead).
            with engine.begin() as conn:
                config.attributes["connection"] = _Shared(conn)
                command.upgrade(config, "head")
        finally:
            engine.dispose()


class _Shared:
    """An open connection where JupyterHub's alembic env.py expects an engine: its
    ``connectable.connect()`` gets the connection (in our transaction), not a new one."""

    def __init__(self, conn):
        self.conn = conn

    def connect(self):
        return contextlib.nullcontext(self.conn)


def upgrade(url: str) -> dict:
    """Migrate to this JupyterHub's revision; the old and new revisions."""
    before = check(url)
    if before["state"] != OLDER:
        raise SystemExit(f"error: the database is {before['state']} "
                         f"(revision {before['revision']}, this JupyterHub's {before['head']}): "
                         "nothing to upgrade")
    path = sqlite_file(url)
    if path is None:
        migrate(url)
    else:
        with _beside(path) as copy:
            online_copy(path, copy)
            # The copy's last connection folded the log into the file; a log still there
            # means a hub still has the database open (its commits would be lost).
            if wal_of(path).exists() and wal_of(path).stat().st_size:
                raise SystemExit(f"error: {wal_of(path).name} is still in use (is a hub "
                                 "running?); the database was left as it was")
            migrate(f"sqlite:///{copy}")
            if revision_of(f"sqlite:///{copy}")[1] != before["head"]:
                raise SystemExit("error: the migrated copy is not at the new revision; "
                                 "the database was left as it was")
            shutil.copymode(path, copy)
            os.replace(copy, path)
    after = check(url)
    if after["state"] != CURRENT:
        raise SystemExit(f"error: after the migration the database is {after['state']}")
    return {"from": before["revision"], "to": after["revision"],
            "jupyterhub": after["jupyterhub"]}


@contextlib.contextmanager
def _beside(path: Path) -> Iterator[Path]:
    """A new file next to ``path`` (same file system: os.replace is atomic), removed unless
    it was moved into place."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.upgrading-", dir=path.parent)
    os.close(fd)
    copy = Path(name)
    try:
        yield copy
    finally:
        copy.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m gpuhub.services.hubdb", description=__doc__)
    parser.add_argument("command", choices=["check", "dump", "upgrade"])
    args = parser.parse_args(argv)
    url = database_url()
    try:
        if args.command == "check":
            print(json.dumps(check(url)))
        elif args.command == "dump":
            dump(url, sys.stdout.buffer)
        else:
            print(json.dumps(upgrade(url)))
    except SystemExit:
        raise
    except Exception as err:  # one line for the task; the database is as it was
        first = str(err).strip().splitlines()[:1] or [""]
        print(f"error: {type(err).__name__}: {first[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
