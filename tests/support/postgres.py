"""A PostgreSQL server a test started: Debian's `postgresql` binaries, a cluster of its own,
run as the ``postgres`` user in a network namespace the test made (support.hostnet), on
its address there: a database server on another machine, as the README asks of one (the
lab firewall keeps the hub, on the labs network, off the Docker host itself). Not the
package's service."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.stack import free_port
from support.hostnet import Namespace
from support.serverprocess import ServerProcess, port_open

USER, DATABASE = "hub", "hub"


def bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def require() -> None:
    if bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/provision does)")
    if os.geteuid() != 0:
        pytest.skip("starting PostgreSQL as its own user needs root")


@dataclass
class Postgres(ServerProcess):
    host: str = ""
    port: int = 0
    password: str = ""
    socket_dir: Path = Path()

    def remove(self) -> None:
        """Stop the server and delete its folder."""
        self.stop()
        shutil.rmtree(self.log_file.parent, ignore_errors=True)

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{self.password}@{self.host}:{self.port}/{DATABASE}"

    def sql(self, statement: str) -> str:
        """Run ``statement`` as the superuser, over the Unix socket; its rows, one a line."""
        psql = bin_dir() / "psql"
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(psql), "-h", str(self.socket_dir), "-p",
             str(self.port), "-d", DATABASE, "-v", "ON_ERROR_STOP=1", "-tAc", statement],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"psql {statement!r}: {result.stderr}"
        return result.stdout.strip()


def start(namespace: Namespace, password: str) -> Postgres:
    """A new cluster in a folder of its own (the postgres user cannot enter pytest's, which
    is root's alone; `remove` deletes it), on ``namespace``'s address, with the database and
    user ``hub``."""
    host = namespace.address
    binaries = bin_dir()
    assert binaries is not None
    folder = Path(tempfile.mkdtemp(prefix="gpuhubtest-postgres-"))
    shutil.chown(folder, "postgres", "postgres")
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir(exist_ok=True)
    shutil.chown(sockets, "postgres", "postgres")
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_postgres, str(binaries / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth-local=trust", "--auth-host=scram-sha-256"],
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    log = folder / "postgres.log"
    process = subprocess.Popen(
        namespace.command(*as_postgres, str(binaries / "postgres"), "-D", str(data), "-p", str(port),
         "-c", f"listen_addresses={host}", "-c", f"unix_socket_directories={sockets}"),
        stdout=open(log, "w"), stderr=subprocess.STDOUT)
    server = Postgres(process, log, host=host, port=port, password=password, socket_dir=sockets)
    server.wait_until_ready(lambda: port_open(host, port), f"PostgreSQL on {host}:{port}", 60)
    with open(data / "pg_hba.conf", "a") as hba:  # any address that reaches the listener
        hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
    subprocess.run([*as_postgres, str(binaries / "pg_ctl"), "reload", "-D", str(data)],
                   check=True, capture_output=True, timeout=60)
    psql = [*as_postgres, str(binaries / "psql"), "-h", str(sockets), "-p", str(port),
            "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c"]
    subprocess.run([*psql, f"CREATE USER {USER} PASSWORD '{password}'"], check=True,
                   capture_output=True, timeout=60)
    subprocess.run([*psql, f"CREATE DATABASE {DATABASE} OWNER {USER}"], check=True,
                   capture_output=True, timeout=60)
    return server
