"""`invoke up`'s hub database step: a new JupyterHub meets the database the old one left.

Run after the images are built and before the hub is recreated (compose mode), with the
*new* hub image (gpuhub.services.hubdb, in a throw-away container):

- same schema, or no database yet: nothing to do;
- older (a JupyterHub upgrade): the hub is stopped (labs and the proxy keep running), the
  database is copied to ``backups/hub-db-<UTC time>-jupyterhub-<old>-to-<new>.<ext>``,
  then migrated all or nothing; on failure the old hub starts again, as it was;
- newer (going back to an older gpuhub or JupyterHub): refused before anything changes,
  while the running hub keeps running.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gpuhub.core import names
from gpuhub.tasks.deployment import fail, hub_running, stderr_tail, step

HUBDB = "python3 -m gpuhub.services.hubdb"


def run_hubdb(c, project, command: str, out: Path | None = None):
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
                 f"{shlex.quote(project.settings.hub_image)} {HUBDB} {command}{redirect}",
                 env={"DATABASE_URL": project.settings.database_url}, hide=True, warn=True)


def check(c, project) -> dict:
    result = run_hubdb(c, project, "check")
    lines = result.stdout.strip().splitlines()
    if result.failed or not lines:
        raise fail("cannot read the hub database with the new hub image ("
                   + stderr_tail(result, f"exit code {result.return_code}")
                   + "); nothing was changed")
    return json.loads(lines[-1])


def needs_check(c, project, env: dict) -> bool:
    """False when the answer is known without starting a container: no database yet (SQLite
    on a hub-data volume that does not exist), or a hub container of this very image (it
    opened the database already)."""
    if not project.settings.database_url and c.run(
            f"docker volume inspect {shlex.quote(names.hub_data_volume(project.name))}",
            hide=True, warn=True).failed:
        return False
    container = c.run(project.compose("ps -aq hub"), env=env, hide=True, warn=True).stdout.split()
    image = c.run(f"docker image inspect -f '{{{{.Id}}}}' {shlex.quote(project.settings.hub_image)}",
                  hide=True, warn=True).stdout.strip()
    if container and image:
        used = c.run(f"docker inspect -f '{{{{.Image}}}}' {shlex.quote(container[0])}",
                     hide=True, warn=True).stdout.strip()
        return used != image
    return True


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


def bring_to_image(c, project, env: dict) -> Upgraded | None:
    """Make the hub database fit the new hub image; what was done, or None when there was
    nothing to do. Raises (one line) when it cannot, with everything as it was."""
    if not needs_check(c, project, env):
        return None
    found = check(c, project)
    if found["state"] in (names.HUB_DB_EMPTY, names.HUB_DB_CURRENT):
        return None
    if found["state"] == names.HUB_DB_NEWER:
        raise fail(f"the hub database was written by a newer JupyterHub (schema "
                   f"{found['revision']}) than this gpuhub's {found['jupyterhub']} (schema "
                   f"{found['head']}), which cannot open it; nothing was changed. Go back to the "
                   "newer gpuhub (and JUPYTERHUB_VERSION), or restore the database copy "
                   f"`invoke up` made before that upgrade ({names.UPGRADE_BACKUPS_DIR}/hub-db-*)")
    old = running_jupyterhub(c, project)
    was_running = hub_running(c, project)
    path = backup_path(project, found, old, datetime.now(UTC))
    path.parent.mkdir(mode=0o700, exist_ok=True)
    if was_running:
        step("stopping the hub to upgrade its database (labs and their sessions keep running)")
        c.run(project.compose("stop hub"), env=env, hide=True)
    step(f"copying the hub database to {path}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    dumped = run_hubdb(c, project, "dump", out=path)
    if dumped.failed or not path.stat().st_size:
        _restart_old(c, project, env, was_running)
        raise fail("cannot copy the hub database before upgrading it ("
                   + stderr_tail(dumped, f"exit code {dumped.return_code}")
                   + "); nothing was changed" + (", the old hub runs again" if was_running else ""))
    step(f"upgrading the hub database to JupyterHub {found['jupyterhub']}'s schema")
    upgraded = run_hubdb(c, project, "upgrade")
    if upgraded.failed:
        _restart_old(c, project, env, was_running)
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


def _restart_old(c, project, env: dict, was_running: bool) -> None:
    """The hub container stopped above, started again (the old image, the old hub), and
    healthy before the admin reads that it runs."""
    if was_running:
        c.run(project.compose("up -d --no-deps --no-recreate --wait --wait-timeout 180 hub"),
              env=env, hide=True, warn=True)


def refuse_unless_current(c, project) -> None:
    """Swarm mode: `invoke up` does not migrate there yet; a database the new hub image
    cannot open is refused before the stack is deployed (the hub would restart over and
    over), with the steps that do it by hand."""
    if not project.settings.database_url and c.run(
            f"docker volume inspect {shlex.quote(names.hub_data_volume(project.name))}",
            hide=True, warn=True).failed:
        return
    found = check(c, project)
    if found["state"] in (names.HUB_DB_EMPTY, names.HUB_DB_CURRENT):
        return
    if found["state"] == names.HUB_DB_NEWER:
        raise fail(f"the hub database was written by a newer JupyterHub (schema "
                   f"{found['revision']}) than this gpuhub's {found['jupyterhub']}; nothing "
                   "was changed: go back to the newer gpuhub, or restore a backup")
    raise fail(f"the hub database needs JupyterHub {found['jupyterhub']}'s migration (schema "
               f"{found['revision']} -> {found['head']}), which `invoke up` makes in compose "
               "mode only; nothing was changed. By hand: `invoke backup`, then `docker service "
               f"scale {project.hub_service}=0`, then `docker run --rm -v "
               f"{names.hub_data_volume(project.name)}:{names.HUB_DATA_DIR} -e DATABASE_URL "
               f"{project.settings.hub_image} {HUBDB} upgrade`, then `invoke up`")
