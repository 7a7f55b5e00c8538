"""`invoke up`'s hub database step: a new JupyterHub meets the database the old one left.

Run after the images are built (and pushed) and before the hub is recreated, in either mode,
with the *new* hub image (gpuhub.services.hubdb, in a throw-away container):

- same schema, or no database yet: nothing to do;
- older (a JupyterHub upgrade): the hub is stopped (labs and the proxy keep running), the
  database is copied to ``backups/hub-db-<UTC time>-jupyterhub-<old>-to-<new>.<ext>``,
  then migrated all or nothing; on failure the old hub starts again, as it was;
- newer (going back to an older gpuhub or JupyterHub): refused before anything changes,
  while the running hub keeps running.

What differs by mode (which image is new, how the hub stops and starts again) comes in a
``HubSwitch`` from the mode's module (composestack.hub_switch, swarmstack.hub_switch).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gpuhub.core import names
from gpuhub.tasks.deployment import fail, stderr_tail, step

HUBDB = "python3 -m gpuhub.services.hubdb"


@dataclass(frozen=True)
class HubSwitch:
    """A mode's part of the step: the new hub image (present on this Docker host), whether
    a hub runs (or would start by itself), how it is stopped for the migration and started
    again, as it was, when the step fails, and whether it already runs the new image (then
    nothing needs checking)."""

    image: str
    running: Callable[[], bool]
    stop: Callable[[], object]
    start_old: Callable[[], object]
    runs_image: Callable[[], bool] = lambda: False


def run_hubdb(c, project, image: str, command: str, out: Path | None = None):
    """gpuhub.services.hubdb COMMAND in a throw-away container of the (new) hub image, with
    the hub-data volume (if it exists) and DATABASE_URL (in the environment, not on the
    command line). Not `compose run`: that would make the project's networks before `up`
    does, without the overrides `up` adds. No network for SQLite; PostgreSQL is reached
    as from any container (Docker's default bridge)."""
    volume = names.hub_data_volume(project.name)
    mount = (f"-v {shlex.quote(volume + ':' + names.HUB_DATA_DIR)} "
             if c.run(f"docker volume inspect {shlex.quote(volume)}", hide=True, warn=True).ok
             else "")
    network = "" if project.settings.database_url else "--network none "
    redirect = f" > {shlex.quote(str(out))}" if out else ""
    return c.run(f"docker run --rm {network}-e DATABASE_URL {mount}"
                 f"{shlex.quote(image)} {HUBDB} {command}{redirect}",
                 env={"DATABASE_URL": project.settings.database_url}, hide=True, warn=True)


def check(c, project, image: str) -> dict:
    result = run_hubdb(c, project, image, "check")
    lines = result.stdout.strip().splitlines()
    if result.failed or not lines:
        raise fail("cannot read the hub database with the new hub image ("
                   + stderr_tail(result, f"exit code {result.return_code}")
                   + "); nothing was changed")
    return json.loads(lines[-1])


def needs_check(c, project, hub: HubSwitch) -> bool:
    """False when the answer is known without starting a container: no database yet (SQLite
    on a hub-data volume that does not exist), or a hub that runs the new image (it opened
    the database already)."""
    if not project.settings.database_url and c.run(
            f"docker volume inspect {shlex.quote(names.hub_data_volume(project.name))}",
            hide=True, warn=True).failed:
        return False
    return not hub.runs_image()


def running_jupyterhub(c, project) -> str | None:
    """The JupyterHub version of the hub that runs now, if one does."""
    result = c.run(project.exec_hub("python3 -c 'import jupyterhub; print(jupyterhub.__version__)'"),
                   env=project.env(), hide=True, warn=True)
    return result.stdout.strip() if result.ok and result.stdout.strip() else None


def backup_path(project, found: dict, old: str | None, now: datetime) -> Path:
    ext = "sqlite" if not project.settings.database_url else "jsonl"
    before = f"jupyterhub-{old}" if old else f"schema-{found['revision']}"
    return (project.root / names.UPGRADE_BACKUPS_DIR
            / f"hub-db-{now:%Y%m%dT%H%M%SZ}-{before}-to-{found['jupyterhub']}.{ext}")


@dataclass(frozen=True)
class Upgraded:
    message: str  # the one line for the admin
    backup: Path  # the database as it was


def bring_to_image(c, project, hub: HubSwitch) -> Upgraded | None:
    """Make the hub database fit the new hub image; what was done, or None when there was
    nothing to do. Raises (one line) when it cannot, with everything as it was."""
    if not needs_check(c, project, hub):
        return None
    found = check(c, project, hub.image)
    if found["state"] in (names.HUB_DB_EMPTY, names.HUB_DB_CURRENT):
        return None
    if found["state"] == names.HUB_DB_NEWER:
        raise fail(f"the hub database was written by a newer JupyterHub (schema "
                   f"{found['revision']}) than this gpuhub's {found['jupyterhub']} (schema "
                   f"{found['head']}), which cannot open it; nothing was changed. Go back to the "
                   "newer gpuhub (and JUPYTERHUB_VERSION), or restore the database copy "
                   f"`invoke up` made before that upgrade ({names.UPGRADE_BACKUPS_DIR}/hub-db-*)")
    old = running_jupyterhub(c, project)
    was_running = hub.running()
    path = backup_path(project, found, old, datetime.now(UTC))
    path.parent.mkdir(mode=0o700, exist_ok=True)
    if was_running:
        step("stopping the hub to upgrade its database (labs and their sessions keep running)")
        hub.stop()
    step(f"copying the hub database to {path}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    dumped = run_hubdb(c, project, hub.image, "dump", out=path)
    if dumped.failed or not path.stat().st_size:
        if was_running:
            hub.start_old()
        raise fail("cannot copy the hub database before upgrading it ("
                   + stderr_tail(dumped, f"exit code {dumped.return_code}")
                   + "); nothing was changed" + (", the old hub runs again" if was_running else ""))
    step(f"upgrading the hub database to JupyterHub {found['jupyterhub']}'s schema")
    upgraded = run_hubdb(c, project, hub.image, "upgrade")
    if upgraded.failed:
        if was_running:
            hub.start_old()
        raise fail("the hub database could not be upgraded ("
                   + stderr_tail(upgraded, f"exit code {upgraded.return_code}")
                   + "); it is as it was" + (" and the old hub runs again" if was_running else "")
                   + f"; a copy is in {path}. Fix the cause (is the hub-data volume, or the "
                   "PostgreSQL user, writable?) and run `invoke up` again")
    done = json.loads(upgraded.stdout.strip().splitlines()[-1])
    return Upgraded(
        f"upgraded the hub database from {'JupyterHub ' + old if old else 'an older JupyterHub'}"
        f" (schema {done['from']}) to JupyterHub {done['jupyterhub']} (schema {done['to']}); "
        f"the database as it was is in {path}", path)
