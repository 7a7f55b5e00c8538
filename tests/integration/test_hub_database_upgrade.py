"""The hub database step of `invoke up` on PostgreSQL, live: JupyterHub 5.5.4 to this
release's, a migration that fails (nothing changes, the old hub runs again), the one that
works, and going back refused.

This release built at JUPYTERHUB_VERSION=5.5.4 stands for the previous JupyterHub (the
previous gpuhub release, 0.12.0, has no PostgreSQL driver in its hub image:
test_upgrade.py upgrades it on SQLite).
"""

from __future__ import annotations

import json
import os
import secrets

import pytest

from harness.hub import HubUser
from harness.stack import Stack
from support import postgres
from support.hostnet import Namespace

JUPYTERHUB_5_5 = "4621fec11365"  # JupyterHub 5.5's alembic head
IMAGES = {"HUB_IMAGE": "gpuhub-hub:upgrade-pg", "LAB_IMAGE": "gpuhub-lab:upgrade-pg",
          "DOCKER_PROXY_IMAGE": "gpuhub-docker-proxy:upgrade-pg",
          "LAB_FIREWALL_IMAGE": "gpuhub-lab-firewall:upgrade-pg"}
PASSWORD = "erin-pw-3c9a1f"


@pytest.fixture(scope="module")
def pg_stack(stack_factory):
    postgres.require()
    namespace = Namespace()
    server = None
    try:
        server = postgres.start(namespace, secrets.token_hex(12))
        # The test stacks block 198.18.0.0/15 (the namespace's range) for labs, and the hub
        # shares their network: here another range no test uses is blocked instead.
        stack = stack_factory(**IMAGES, JUPYTERHUB_VERSION="5.5.4", DATABASE_URL=server.url,
                              LAB_BLOCKED_NETWORKS="203.0.113.0/24")
        stack.up()
        yield stack, server
    finally:
        if server:
            server.remove()
        namespace.close()


def hub_version(stack: Stack) -> str:
    return json.loads(stack.compose("exec", "-T", "hub", "python3", "-c",
                                    "import json, jupyterhub; "
                                    "print(json.dumps(jupyterhub.__version__))").stdout)


def hub_id(stack: Stack) -> str:
    return stack.compose("ps", "-q", "hub").stdout.strip()


def columns(server: postgres.Postgres, table: str) -> set[str]:
    return set(server.sql("SELECT column_name FROM information_schema.columns "
                          f"WHERE table_name = '{table}'").split())


def error_lines(result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]


def test_a_failing_migration_changes_nothing_then_the_upgrade_works_and_going_back_is_refused(
        pg_stack):
    stack, server = pg_stack
    assert hub_version(stack) == "5.5.4"
    erin = stack.signed_up("erin", PASSWORD)
    token = erin.token
    assert server.sql("SELECT version_num FROM alembic_version") == JUPYTERHUB_5_5
    old_hub = hub_id(stack)

    # The last of JupyterHub 6's migrations adds spawners.display_name: a column of that
    # name already there makes it fail after the earlier ones ran.
    server.sql("ALTER TABLE spawners ADD COLUMN display_name VARCHAR(255)")
    del stack.settings["JUPYTERHUB_VERSION"]
    stack.write_env()
    failed = stack.invoke("up", check=False)
    assert failed.returncode == 1, failed.stdout[-2000:]
    [line] = error_lines(failed)
    assert "could not be upgraded" in line and "display_name" in line, line
    assert "it is as it was and the old hub runs again" in line, line
    # As it was: the stamp, and none of the migrations that ran before the failing one.
    assert server.sql("SELECT version_num FROM alembic_version") == JUPYTERHUB_5_5
    assert "timeout" not in columns(server, "services")
    # The old hub runs again (the same container, its old image) and serves.
    assert hub_id(stack) == old_hub and hub_version(stack) == "5.5.4"
    HubUser(stack.url, "erin").login(PASSWORD)

    server.sql("ALTER TABLE spawners DROP COLUMN display_name")
    upgraded = stack.up()
    [said] = [ln for ln in upgraded.stdout.splitlines() if "upgraded the hub database" in ln]
    assert "from JupyterHub 5.5.4" in said, said
    new_version = hub_version(stack)
    assert new_version.split(".")[0] >= "6", new_version
    assert server.sql("SELECT version_num FROM alembic_version") != JUPYTERHUB_5_5
    assert {"timeout"} <= columns(server, "services")
    # The copy taken before: every row, as JSON lines, named by the versions.
    copy = said.rsplit(" ", 1)[1]
    assert copy.endswith(f"-jupyterhub-5.5.4-to-{new_version}.jsonl"), copy
    rows = [json.loads(ln) for ln in open(copy)]
    assert {"table": "alembic_version", "row": {"version_num": JUPYTERHUB_5_5}} in rows
    assert any(r["table"] == "users" and r["row"]["name"] == "erin" for r in rows)
    os.unlink(copy)  # in the checkout's backups/ (the test stacks' project root)
    # erin logs in with her password; her token still works.
    HubUser(stack.url, "erin").login(PASSWORD)
    assert erin.api("GET", "/user", token=token).json()["name"] == "erin"

    # Back to JupyterHub 5.5.4 over the upgraded database: refused, nothing touched.
    new_hub = hub_id(stack)
    stack.settings["JUPYTERHUB_VERSION"] = "5.5.4"
    stack.write_env()
    refused = stack.invoke("up", check=False)
    assert refused.returncode == 1
    [line] = error_lines(refused)
    assert "written by a newer JupyterHub" in line and "nothing was changed" in line, line
    assert hub_id(stack) == new_hub and hub_version(stack) == new_version
    HubUser(stack.url, "erin").login(PASSWORD)
