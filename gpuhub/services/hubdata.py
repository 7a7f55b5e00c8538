"""The hub's side of `invoke backup`, run in a throw-away container of the hub image with
the hub-data volume mounted (``python3 -m gpuhub.services.hubdata /data [--include-secrets]``).

It writes a tar to stdout:

- ``hub.json``: JupyterHub's version, and the users with the names of their work volumes
  (read through JupyterHub's own ORM, from the copy);
- ``jupyterhub.sqlite``: a consistent copy of the database, made with SQLite's online
  backup, safe while the hub runs;
- ``usage.jsonl``, if the hub wrote any records (it only appends: a copy made while it
  writes ends at most in a torn last line, which reading them skips);
- ``jupyterhub_cookie_secret``, only with ``--include-secrets``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sqlite3
import sys
import tarfile
import tempfile
from pathlib import Path

from gpuhub.core import names
from gpuhub.services.hubdb import online_copy

DB_FILE = names.HUB_DATABASE_FILE
COOKIE_SECRET_FILE = names.COOKIE_SECRET_FILE


def users(database: Path) -> list[dict]:
    """Each user, admin or not, and their work volume's name after ``<project>-``.

    Plain SQL, not JupyterHub's ORM: the ORM refuses a database of another schema version,
    and a backup must work also between a JupyterHub upgrade's build and its `invoke up`."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT name, admin FROM users ORDER BY name").fetchall()
    return [{"name": name, "admin": bool(admin), "volume": f"home-{names.escape_user(name)}"}
            for name, admin in rows]


def write_backup(data: Path, out, include_secrets: bool) -> None:
    from jupyterhub._version import __version__ as jupyterhub_version

    database = data / DB_FILE
    if not database.is_file():
        raise SystemExit(f"error: the hub-data volume has no {DB_FILE}")
    copy = Path(tempfile.mkdtemp()) / DB_FILE
    online_copy(database, copy)
    info = json.dumps({"jupyterhub_version": jupyterhub_version,
                       "users": users(copy)}).encode()
    with tarfile.open(fileobj=out, mode="w|") as tar:
        member = tarfile.TarInfo("hub.json")
        member.size = len(info)
        tar.addfile(member, io.BytesIO(info))
        tar.add(copy, DB_FILE)
        usage = data / names.USAGE_JOURNAL_FILE
        if usage.is_file():
            tar.add(usage, usage.name)
        secret = data / COOKIE_SECRET_FILE
        if include_secrets and secret.is_file():
            tar.add(secret, COOKIE_SECRET_FILE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m gpuhub.services.hubdata", description=__doc__)
    parser.add_argument("data", type=Path, help="the hub-data volume's mount point")
    parser.add_argument("--include-secrets", action="store_true")
    args = parser.parse_args(argv)
    write_backup(args.data, sys.stdout.buffer, args.include_secrets)


if __name__ == "__main__":
    main()
