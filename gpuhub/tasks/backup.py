"""Back up a deployment into one archive, and restore it into a fresh (stopped) project.

The archive (tar.gz, mode 0600: it holds bcrypt password hashes) contains:

- ``manifest.json``: format, date, project, gpuhub commit, JupyterHub version, users,
  and every other member with its size and SHA-256 (restore checks them all first);
- ``hub/jupyterhub.sqlite``: a consistent copy of the hub database, made with SQLite's
  online backup API, so it is safe while the hub runs;
- ``hub/jupyterhub_cookie_secret``: only with ``--include-secrets`` (restoring it keeps
  logged-in sessions valid; without it everyone logs in again, passwords unchanged);
- ``hub/usage.jsonl``: the records of every lab's start and stop (GPU-hours, see
  gpuhub/core/usage.py), once the hub has written any;
- ``settings.env``: the settings file with secret values (DATABASE_URL, *TOKEN*, …) blanked;
- ``profiles.yaml``: the spawn profiles;
- ``volumes/home-<escaped user>.tar``: every work folder of the project, only with
  ``--with-work-volumes``; those of deleted users too (``invoke deluser`` keeps them), so
  a restore brings their folders back for when they return. Where the folders are is the
  stack's (`Project.stack`): Docker volumes in compose mode, folders under SWARM_HOMES in
  swarm mode; the archive is the same, so a backup of one mode restores into the other.

Docker work runs in short-lived helper containers of the hub image (``--network none``),
so backup works whether the hub is up or down and the host needs neither root nor tar.
Restore never overwrites: it refuses when the target already has a hub database or a
work volume of the same name, and removes what it created when a step fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import sqlite3
import sys
import tarfile
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from invoke import task

from gpuhub.core import names
from gpuhub.core.accounts import check_username
from gpuhub.core.hubsqlite import wal_of
from gpuhub.tasks.deployment import (
    Project,
    fail,
    helper_container,
    hub_running,
    require_docker,
    stderr_tail,
    step,
)
from gpuhub.tasks.project import load

DATA_DIR = Path(names.HUB_DATA_DIR)  # in the hub container
FORMAT = "gpuhub-backup"
FORMAT_VERSION = 1
DB_FILE = names.HUB_DATABASE_FILE
COOKIE_SECRET_FILE = names.COOKIE_SECRET_FILE
USAGE_FILE = names.USAGE_JOURNAL_FILE
# The hub-data files a backup carries (as hub/<name>) and a restore puts back.
HUB_FILES = (DB_FILE, COOKIE_SECRET_FILE, USAGE_FILE)
DEFAULT_DB_URL = f"sqlite:///{DATA_DIR}/{DB_FILE}"
# Setting names whose values may be credentials: blanked in the archive's settings.env.
# Names ending in _DIR, _FILE or _PATH say where a secret lives (SECRETS_DIR), not what it is.
SECRET_SETTING = re.compile(r"DATABASE_URL|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|KEY")
SECRET_LOCATION = re.compile(r".*_(DIR|FILE|PATH)")
# A work folder in the archive: "home-" and the stack's key (the escaped user name).
WORK_VOLUME_SUFFIX = re.compile(r"home-[A-Za-z0-9_.-]*")
# Archive members: the hub's files, settings, profiles, and one tar per work volume
# (named by the volume; archives made before deleted users' folders were included named
# them volumes/<user>.tar).
ARCHIVE_MEMBER = re.compile(r"hub/(" + "|".join(map(re.escape, HUB_FILES)) + r")|settings\.env"
                            r"|profiles\.yaml|volumes/(home-[A-Za-z0-9_.-]*|[a-z][a-z0-9_-]*)\.tar")

# --- names and commands ------------------------------------------------------------

def _file_in(tar: tarfile.TarFile, member: str | tarfile.TarInfo) -> IO[bytes]:
    """A regular file's content in ``tar``; a ValueError for anything else (a link, a folder)."""
    found = tar.extractfile(member)
    if found is None:
        name = member if isinstance(member, str) else member.name
        raise ValueError(f"{name!r} in the archive is not a regular file")
    return found


def hub_data_volume(project: Project) -> str:
    """The compose-made volume of the ``hub-data`` service volume."""
    return names.hub_data_volume(project.name)


def whose(volume: dict) -> str:
    """Whose work folder a manifest entry is, for messages."""
    return f"work folder of {volume['user']}" if volume.get("user") else (
        "work folder of a deleted user")


def hub_data_backup_command(project: Project, image: str, dest: Path,
                            include_secrets: bool) -> str:
    """gpuhub.services.hubdata, in the hub image, with the hub-data volume at /data."""
    args = "python3 -m gpuhub.services.hubdata /data"
    if include_secrets:
        args += " --include-secrets"
    return helper_container(image, hub_data_volume(project), "/data", args) + f" > {shlex.quote(str(dest))}"


def volume_backup_command(image: str, volume: str, dest: Path) -> str:
    # Numeric owners: the lab user's uid, whatever names the helper image knows.
    return (helper_container(image, volume, "/v:ro", "tar -C /v --numeric-owner -cf - .")
            + f" > {shlex.quote(str(dest))}")


def extract_command(image: str, volume: str, source: Path) -> str:
    return (helper_container(image, volume, "/v", "tar -C /v --numeric-owner -xf -", stdin=True)
            + f" < {shlex.quote(str(source))}")


def has_database_command(image: str, volume: str) -> str:
    """True if the volume holds a hub database, or the write-ahead log of one (the
    database's latest commits: a restored file beside it would take them as its own)."""
    return helper_container(image, volume, "/v:ro",
                            f"test -e /v/{DB_FILE} -o -e /v/{wal_of(Path(DB_FILE)).name}")


def create_hub_data_command(project: Project) -> str:
    # Compose's own labels, so `invoke up` adopts the volume as if it had made it.
    return ("docker volume create --label "
            + shlex.quote(f"{names.COMPOSE_PROJECT_LABEL}={project.name}")
            + f" --label com.docker.compose.volume={names.HUB_DATA_VOLUME} "
            + shlex.quote(hub_data_volume(project)))


# --- small pure helpers --------------------------------------------------------------

def blank_secrets(env_text: str) -> tuple[str, list[str]]:
    """The settings file with secret values removed; and the names of those settings."""
    out, blanked = [], []
    for line in env_text.splitlines():
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        key = key.strip()
        if (sep and not line.lstrip().startswith("#") and value.strip()
                and SECRET_SETTING.search(key) and not SECRET_LOCATION.fullmatch(key)):
            blanked.append(key)
            out.append(f"# {key}: value removed by `invoke backup` (it may hold a secret)")
            out.append(f"{key}=")
        else:
            out.append(line)
    return "\n".join(out) + "\n", blanked


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require_sqlite(project: Project, action: str) -> None:
    url = project.settings.database_url
    if not url or url == DEFAULT_DB_URL:
        return
    if url.startswith("postgresql"):
        raise fail(f"DATABASE_URL points to PostgreSQL, which `invoke {action}` does not "
                   "cover; back the database up with pg_dump (and restore with "
                   "pg_restore) instead")
    raise fail(f"DATABASE_URL is {url.split('://')[0]}:// outside the hub-data volume, which "
               f"`invoke {action}` does not cover; empty DATABASE_URL to use the default")


def _volume_exists(c, name: str) -> bool:
    return c.run(f"docker volume inspect {shlex.quote(name)}", hide=True, warn=True).ok


# --- backup ---------------------------------------------------------------------------

@task(help={"output": "Archive to write (default: gpuhub-backup-<project>-<UTC time>.tar.gz "
                      "in the current folder); never overwritten.",
            "with-work-volumes": "Also archive every work folder of the project (each "
                                 "<project>-home-* volume; swarm mode: each folder "
                                 "under SWARM_HOMES), deleted users' included.",
            "include-secrets": "Also archive the hub's cookie secret, so restored sessions "
                               "stay logged in (default: no; users log in again)."})
def backup(c, output=None, with_work_volumes=False, include_secrets=False):
    """Write one archive (mode 0600) with the hub database, settings, profiles and work folders."""
    project = load()
    _require_sqlite(project, "backup")
    stamp = datetime.now(UTC)
    out = Path(output or f"gpuhub-backup-{project.name}-{stamp:%Y%m%dT%H%M%SZ}.tar.gz").resolve()
    if out.exists():
        raise fail(f"{out} already exists; choose another --output or move it away")
    if not out.parent.is_dir():
        raise fail(f"folder {out.parent} does not exist; create it or choose another --output")
    require_docker(c)
    if not _volume_exists(c, hub_data_volume(project)):
        raise fail(f"project {project.name!r} has no hub-data volume "
                   f"({hub_data_volume(project)}): nothing to back up; check "
                   "COMPOSE_PROJECT_NAME in the settings")
    image = project.stack.helper_image(c, project)
    # Beside the archive, not in /tmp: work folders can be larger than a tmpfs.
    staging = Path(tempfile.mkdtemp(prefix=".gpuhub-backup-", dir=out.parent))
    try:
        manifest = _collect(c, project, image, staging, stamp, with_work_volumes,
                            include_secrets)
        _write_archive(out, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    users = ", ".join(u["name"] for u in manifest["users"]) or "none"
    orphans = sum(v["user"] is None for v in manifest["volumes"])
    print(f"backup of project {project.name!r} written to {out} (mode 0600; users: {users}; "
          f"work folders: {len(manifest['volumes'])}"
          + (f", {orphans} of them of deleted users" if orphans else "")
          + f"; cookie secret: {'included' if include_secrets else 'not included'})")


def _collect(c, project: Project, image: str, staging: Path, stamp: datetime,
             with_work_volumes: bool, include_secrets: bool) -> dict:
    """Fill ``staging`` with every member of the archive; return the manifest."""
    step("copying the hub database (SQLite online backup)")
    hub_tar = staging / "hub-data.tar"
    result = c.run(hub_data_backup_command(project, image, hub_tar, include_secrets),
                   hide=True, warn=True, in_stream=False)
    if result.failed:
        raise fail("could not copy the hub database: "
                   + stderr_tail(result, f"exit code {result.return_code}"))
    (staging / "hub").mkdir()
    with tarfile.open(hub_tar) as tar:
        hub_info = json.load(_file_in(tar, "hub.json"))
        for name in HUB_FILES:
            if name in tar.getnames():
                (staging / "hub" / name).write_bytes(_file_in(tar, name).read())
    hub_tar.unlink()

    env_text = project.env_file.read_text() if project.env_file.exists() else ""
    settings_env, blanked = blank_secrets(env_text)
    (staging / "settings.env").write_text(settings_env)
    if project.profiles_path.is_file():
        shutil.copyfile(project.profiles_path, staging / "profiles.yaml")

    volumes = []
    if with_work_volumes:
        volumes = _backup_volumes(c, project, image, staging, hub_info["users"])

    commit = c.run(f"git -C {shlex.quote(str(project.root))} describe --always --dirty",
                   hide=True, warn=True)
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "project": project.name,
        "gpuhub_commit": commit.stdout.strip() if commit.ok else None,
        "jupyterhub_version": hub_info["jupyterhub_version"],
        "database": "sqlite",
        "includes_cookie_secret": (staging / "hub" / COOKIE_SECRET_FILE).exists(),
        "blanked_settings": blanked,
        "users": [{"name": u["name"], "admin": u["admin"]} for u in hub_info["users"]],
        "volumes": volumes,
        "contents": [{"path": p.relative_to(staging).as_posix(), "bytes": p.stat().st_size,
                      "sha256": sha256(p)} for p in files],
    }


def _backup_volumes(c, project: Project, image: str, staging: Path, users: list) -> list:
    """Archive every work folder of the project, whether or not its user still exists."""
    folders = project.stack.work_folders(c, project)
    user_of = {u["volume"]: u["name"] for u in users}
    running = project.stack.running_labs(c, project)
    if running:
        print(f"warning: {len(running)} lab(s) are running; files written during the "
              "backup may be copied half-written (stop the labs for a clean copy)",
              file=sys.stderr)
    (staging / "volumes").mkdir()
    volumes = []
    for folder in folders:
        suffix = f"home-{folder.key}"
        volume: dict[str, Any] = {"user": user_of.get(suffix), "path": f"volumes/{suffix}.tar",
                                  "volume": suffix}
        step(f"archiving the {whose(volume)} ({folder.mount})")
        result = c.run(volume_backup_command(image, folder.mount, staging / volume["path"]),
                       hide=True, warn=True, in_stream=False)
        if result.failed:
            raise fail(f"could not archive {folder.what}: "
                       + stderr_tail(result, f"exit code {result.return_code}"))
        volumes.append(volume)
    return volumes


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, int(datetime.now(UTC).timestamp())
    return info


def _write_archive(out: Path, staging: Path, manifest: dict) -> None:
    """Write the archive under a temporary name (0600 from the start), then rename it."""
    partial = out.with_name(out.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            data = json.dumps(manifest, indent=2).encode() + b"\n"
            tar.addfile(_tarinfo("manifest.json", len(data)), io.BytesIO(data))
            for entry in manifest["contents"]:
                path = staging / entry["path"]
                with open(path, "rb") as f:
                    tar.addfile(_tarinfo(entry["path"], path.stat().st_size), f)
        os.chmod(partial, 0o600)
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


# --- restore --------------------------------------------------------------------------

def read_archive(archive: Path, staging: Path) -> dict:
    """Unpack a backup into ``staging`` in one pass, checking every member; return its manifest.

    Only the members the manifest lists, under names a backup can have, are written:
    a crafted archive cannot place files anywhere else.
    """
    try:
        with tarfile.open(archive, "r|gz") as tar:
            members = iter(tar)
            first = next(members, None)
            if first is None or first.name != "manifest.json":
                raise ValueError("it does not start with a gpuhub manifest.json")
            manifest = json.load(_file_in(tar, first))
            if manifest.get("format") != FORMAT:
                raise ValueError("its manifest is not a gpuhub backup's")
            if manifest.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format version {manifest.get('format_version')!r}; this "
                                 f"gpuhub reads version {FORMAT_VERSION}")
            expected = {e["path"]: e["sha256"] for e in manifest["contents"]}
            for member in members:
                name = member.name
                if name not in expected or not ARCHIVE_MEMBER.fullmatch(name) or not member.isfile():
                    raise ValueError(f"unexpected member {name!r}")
                dest = staging / name
                dest.parent.mkdir(parents=True, exist_ok=True)
                with _file_in(tar, member) as source, open(dest, "wb") as f:
                    shutil.copyfileobj(source, f, 1 << 20)
                if sha256(dest) != expected.pop(name):
                    raise ValueError(f"{name} does not match its checksum")
            if expected:
                raise ValueError(f"missing {', '.join(sorted(expected))}")
    except (OSError, KeyError, ValueError, TypeError, tarfile.TarError, EOFError) as err:
        raise fail(f"{archive} is not a usable gpuhub backup ({err}); nothing was "
                   "changed") from None
    _check_volumes(archive, manifest)
    return manifest


def _check_volumes(archive: Path, manifest: dict) -> None:
    """Each work volume entry: a volume name a backup writes, its own member, its user.

    ``user`` is None for the folder of a user deleted before the backup.
    """
    members = {e["path"] for e in manifest["contents"]}
    seen: set[str] = set()
    for volume in manifest.get("volumes", []):
        try:
            if volume.get("user") is not None:
                check_username(volume["user"])
            ok = (WORK_VOLUME_SUFFIX.fullmatch(volume["volume"]) and volume["volume"] not in seen
                  and volume["path"].startswith("volumes/") and volume["path"] in members)
        except (KeyError, TypeError, AttributeError, ValueError):
            ok = False
        if not ok:
            raise fail(f"{archive} names an odd work volume {volume!r:.200}; nothing was changed")
        seen.add(volume["volume"])


def check_database(path: Path) -> None:
    """SQLite's own integrity check on the restored copy, before it goes anywhere."""
    db = sqlite3.connect(path)
    try:
        ok = db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.execute("SELECT name FROM users LIMIT 1")  # a JupyterHub database at all?
    except sqlite3.DatabaseError as err:
        raise fail(f"the hub database in the backup is damaged ({err}); nothing was "
                   "changed") from None
    finally:
        db.close()
    if not ok:
        raise fail("the hub database in the backup fails SQLite's integrity check; "
                   "nothing was changed")


def forget_running_labs(path: Path) -> None:
    """Mark every lab stopped in the database copy.

    Labs that ran at backup time are not running in the restored project; a spawner
    state still naming their containers could make the new hub adopt the *old*
    project's lab on this host.
    """
    db = sqlite3.connect(path)
    try:
        db.execute("DELETE FROM servers WHERE id IN "
                   "(SELECT server_id FROM spawners WHERE server_id IS NOT NULL)")
        db.execute("UPDATE spawners SET server_id = NULL, state = NULL")
        db.commit()
    finally:
        db.close()


def _hub_tar(staging: Path) -> Path:
    """The files that go onto hub-data, owned by root and readable only by it."""
    path = staging / "hub-data.tar"
    with tarfile.open(path, "w") as tar:
        for name in HUB_FILES:
            src = staging / "hub" / name
            if src.exists():
                info = tar.gettarinfo(str(src), name)
                info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "", ""
                with open(src, "rb") as f:
                    tar.addfile(info, f)
    return path


@task(help={"archive": "The backup to restore (a file `invoke backup` wrote)."})
def restore(c, archive):
    """Restore a backup into this project while it is down and empty; then run `invoke up`."""
    project = load()
    path = Path(archive).resolve()
    if not path.is_file():
        raise fail(f"no file {path}; give the archive `invoke backup` wrote")
    _require_sqlite(project, "restore")
    staging = Path(tempfile.mkdtemp(prefix="gpuhub-restore-"))
    try:
        manifest = read_archive(path, staging)
        db = staging / "hub" / DB_FILE
        if not db.is_file():
            raise fail(f"{path} has no hub database; nothing was changed")
        check_database(db)
        forget_running_labs(db)
        require_docker(c)
        image, hub_data_existed = _check_target(c, project, manifest)
        _put_in_place(c, project, image, manifest, staging, hub_data_existed)
        profiles_differ = _profiles_differ(project, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    users = ", ".join(u["name"] for u in manifest["users"]) or "none"
    print(f"restored {len(manifest['users'])} user(s) ({users}) and "
          f"{len(manifest['volumes'])} work folder(s) from project {manifest['project']!r} "
          f"into project {project.name!r}; start it with `invoke up`")
    if not manifest.get("includes_cookie_secret"):
        print("note: the backup has no cookie secret, so everyone logs in again "
              "(passwords are unchanged)")
    if profiles_differ:
        print(f"note: profiles.yaml in the backup differs from {project.profiles_path}; "
              f"see it with `tar -xzOf {shlex.quote(str(path))} profiles.yaml`")


def _check_target(c, project: Project, manifest: dict) -> tuple[str, bool]:
    """Refuse, before changing anything, unless the target is stopped and empty.

    Returns the image for the helpers, and whether the hub-data volume exists already
    (empty of a database).
    """
    if hub_running(c, project):
        raise fail(f"the hub of project {project.name!r} is running; restore works on a "
                   "stopped, empty project: run `invoke down` first (or restore into "
                   "another COMPOSE_PROJECT_NAME)")
    image = project.stack.helper_image(c, project)
    hub_data = hub_data_volume(project)
    exists = _volume_exists(c, hub_data)
    if exists and c.run(has_database_command(image, hub_data), hide=True, warn=True).ok:
        raise fail(f"project {project.name!r} already has a hub database (volume "
                   f"{hub_data}); restore never overwrites: set a new COMPOSE_PROJECT_NAME, "
                   f"or delete this project's state with `docker volume rm {hub_data}` "
                   "(its users and passwords are lost) and run `invoke restore` again")
    for volume in manifest["volumes"]:
        folder = _archived_folder(project, volume)
        if folder.exists(c):
            raise fail(f"{folder.what} ({whose(volume)}) already exists; "
                       f"restore never overwrites: remove it with {folder.by_hand} "
                       "or set a new COMPOSE_PROJECT_NAME, then run `invoke restore` again")
    return image, exists


def _archived_folder(project: Project, volume: dict):
    """Where the stack keeps the work folder of a manifest entry (``home-<key>``)."""
    return project.stack.archived_work_folder(project, volume["volume"].removeprefix("home-"))


def _put_in_place(c, project: Project, image: str, manifest: dict, staging: Path,
                  hub_data_existed: bool) -> None:
    """Create the volumes and fill them; on any failure remove what this restore made."""
    hub_data = hub_data_volume(project)
    undo: list[str] = []  # the commands that remove what this restore made

    def run(cmd: str, what: str) -> None:
        result = c.run(cmd, hide=True, warn=True, in_stream=False)
        if result.failed:
            for command in reversed(undo):
                c.run(command, hide=True, warn=True)
            if hub_data_existed:  # only the files this restore brought
                files = " ".join(f"/v/{n}" for n in HUB_FILES if (staging / "hub" / n).exists())
                c.run(helper_container(image, hub_data, "/v", f"rm -f {files}"), hide=True, warn=True)
            raise fail(f"could not {what}: "
                       + stderr_tail(result, f"exit code {result.return_code}")
                       + "; what this restore had made is removed again")

    step(f"restoring the hub database into {hub_data}")
    if not hub_data_existed:
        run(create_hub_data_command(project), f"create volume {hub_data}")
        undo.append(f"docker volume rm {shlex.quote(hub_data)}")
    run(extract_command(image, hub_data, _hub_tar(staging)), f"fill volume {hub_data}")
    for volume in manifest["volumes"]:
        folder = _archived_folder(project, volume)
        step(f"restoring the {whose(volume)} into {folder.mount}")
        run(folder.create_command(image), f"create {folder.what}")
        undo.append(folder.remove_command(image))
        run(extract_command(image, folder.mount, staging / volume["path"]), f"fill {folder.what}")


def _profiles_differ(project: Project, staging: Path) -> bool:
    """Settings and profiles are the admin's files: restore points out a difference only."""
    saved = staging / "profiles.yaml"
    current = project.profiles_path
    return saved.is_file() and (not current.is_file() or current.read_bytes() != saved.read_bytes())
