"""User administration inside the hub container: ``python3 -m gpuhub.usercli``.

`invoke adduser/passwd/deluser/users` run this with ``docker compose exec``; passwords
arrive on stdin, never as arguments (they would show in ``ps`` and ``docker inspect``).
Passwords go to NativeAuthenticator's table (bcrypt hashes) in the hub database; the
JupyterHub user itself is created and deleted through the Hub REST API, so the running
hub knows about every change at once.

Exit status: 0 done, 2 refused (one line on stderr says why and what to do), 1 failure
(one line says what was done and what is left to do by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import bcrypt
import requests

from . import names
from .accounts import check_password, check_username
from .hubconfig import ADMIN_TOKEN_FILE, DATA_DIR
from .settings import Settings, validate
from .swarm import HOMES_MOUNT

HUB_API = "http://127.0.0.1:8081/hub/api"


class Refused(Exception):
    """The request is wrong (user input); nothing was changed."""


class Unfinished(Exception):
    """Part of the request was done; the message says what is left to do by hand."""


def read_password(stream) -> str:
    line = stream.readline()
    return line[:-1] if line.endswith("\n") else line


class Hub:
    """The Hub REST API (with the gpuhub-admin service token) and the hub database."""

    def __init__(self, data_dir: Path = DATA_DIR, api: str = HUB_API):
        self.api = api
        token = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"
        settings = validate(os.environ)
        self.db_url = names.hub_database_url(data_dir, settings.database_url)
        self._db = None

    def request(self, method: str, path: str, **kw) -> requests.Response:
        try:
            return self.http.request(method, f"{self.api}{path}", timeout=30, **kw)
        except requests.ConnectionError:
            raise Refused("the hub is not answering yet; wait a moment, or see `invoke logs`") from None

    @property
    def db(self):
        if self._db is None:
            from nativeauthenticator.orm import UserInfo  # noqa: F401  (registers the table)

            from jupyterhub import orm
            self._db = orm.new_session_factory(self.db_url)()
        return self._db

    def user_info(self, name: str):
        from nativeauthenticator.orm import UserInfo
        return UserInfo.find(self.db, name)

    def hub_user(self, name: str) -> dict | None:
        r = self.request("GET", f"/users/{name}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()


def check_not_common(password: str) -> None:
    """The same common-password list the hub's web form uses (NativeAuthenticator's)."""
    import nativeauthenticator

    path = Path(nativeauthenticator.__file__).with_name("common-credentials.txt")
    if path.exists() and password in set(path.read_text().splitlines()):
        raise Refused("that password is on the list of common passwords; choose another")


def _hash(password: str) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt())


def add(hub: Hub, name: str, password: str, admin: bool) -> str:
    from nativeauthenticator.orm import UserInfo
    check_username(name)
    check_password(password)
    check_not_common(password)
    if hub.user_info(name) is not None:
        raise Refused(f"user {name!r} already exists; use `invoke passwd {name}` to change "
                      "the password, or pick another name")
    # The hub user may exist without a password yet (ADMIN_USERS, or made in the admin
    # panel): then it only gets its password (and admin flag).
    existing = hub.hub_user(name)
    hub.db.add(UserInfo(username=name, password=_hash(password), is_authorized=True))
    hub.db.commit()
    ok = False
    try:
        if existing is None:
            r = hub.request("POST", f"/users/{name}", json={"admin": admin})
            ok = r.status_code == 201
        elif admin and not existing.get("admin"):
            r = hub.request("PATCH", f"/users/{name}", json={"admin": True})
            ok = r.status_code == 200
        else:
            r, ok = None, True
    finally:
        if not ok:
            # Leave nothing half-created behind, also when the hub did not answer.
            hub.db.delete(hub.user_info(name))
            hub.db.commit()
    if not ok:
        raise Refused(f"the hub refused to create {name!r}: {r.status_code} {r.text[:200]}")
    return f"created user {name}" + (" (admin)" if admin else "")


def passwd(hub: Hub, name: str, password: str) -> str:
    check_username(name)
    info = hub.user_info(name)
    if info is None:
        raise Refused(f"no user {name!r}; see `invoke users`, or create it with "
                      f"`invoke adduser {name}`")
    check_password(password)
    check_not_common(password)
    info.password = _hash(password)
    hub.db.commit()
    return f"password of {name} changed"


def delete(hub: Hub, name: str, purge_data: bool) -> str:
    check_username(name)
    info, user = hub.user_info(name), hub.hub_user(name)
    if info is None and user is None:
        # deluser keeps the work folder: --purge-data later removes what is left.
        folder = work_folder(validate(os.environ), name)
        if purge_data and folder.exists():
            return f"no user {name} any more; " + folder.remove()
        raise Refused(f"no user {name!r}; see `invoke users`")
    if user is not None:
        # Stops the lab, deletes the user; NativeAuthenticator removes its password row.
        r = hub.request("DELETE", f"/users/{name}")
        if r.status_code not in (204, 404):
            raise Refused(f"the hub could not delete {name!r}: {r.status_code} {r.text[:200]}")
    info = hub.user_info(name)
    if info is not None:
        hub.db.delete(info)
        hub.db.commit()
    message = f"deleted user {name}"
    if purge_data:
        try:
            message += "; " + work_folder(validate(os.environ), name).remove()
        except Unfinished as err:
            raise Unfinished(f"{message}, but {err}") from None
    else:
        message += "; work folder kept (delete it with --purge-data)"
    return message


class WorkVolume:
    """Compose mode: the user's work folder is a Docker volume (reached through docker-proxy)."""

    def __init__(self, settings: Settings, name: str):
        self.volume = names.work_volume(settings.compose_project_name, name)

    def exists(self) -> bool:
        import docker

        try:
            docker.from_env().volumes.get(self.volume)
        except docker.errors.NotFound:
            return False
        return True

    def remove(self) -> str:
        import docker

        try:
            docker.from_env().volumes.get(self.volume).remove()
        except docker.errors.NotFound:
            return f"no work volume {self.volume} to remove"
        except docker.errors.APIError as err:  # e.g. still in use by a container
            raise Unfinished(f"the work volume {self.volume} could not be removed "
                             f"({err.explanation}); remove it with `docker volume rm "
                             f"{self.volume}` once no container uses it") from None
        return f"removed work volume {self.volume}"


class SwarmHome:
    """Swarm mode: the user's work folder is SWARM_HOMES/<user>, which the hub has at
    HOMES_MOUNT and created there (GpuSwarmSpawner.ensure_home)."""

    def __init__(self, settings: Settings, name: str, homes: Path | None = None):
        folder = names.escape_user(name)  # [a-z0-9-] only: never a path of its own
        self.path = Path(homes or HOMES_MOUNT) / folder
        self.on_nodes = f"{settings.swarm_homes}/{folder}"

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def remove(self) -> str:
        by_hand = f"remove it on a node that mounts SWARM_HOMES: sudo rm -r -- {self.on_nodes}"
        if not self.path.parent.is_dir():
            raise Unfinished(f"SWARM_HOMES is not mounted in the hub at {self.path.parent}; "
                             f"{by_hand}")
        if self.path.is_symlink():
            self.path.unlink()  # the link itself, never what it points to
            return f"removed the link {self.on_nodes} (not what it points to)"
        if self.exists() and not self.path.is_dir():
            self.path.unlink()
            return f"removed {self.on_nodes} (a file, not a folder)"
        if not self.exists():
            return f"no work folder {self.on_nodes} to remove"
        # rmtree follows no symbolic link out of the folder (it works on open directories)
        # where the platform allows that; elsewhere leave it to the admin.
        if not shutil.rmtree.avoids_symlink_attacks:
            raise Unfinished(f"the work folder {self.on_nodes} was kept (this platform cannot "
                             f"remove it without following links); {by_hand}")
        try:
            shutil.rmtree(self.path)
        except OSError as err:
            raise Unfinished(f"the work folder {self.on_nodes} could not be removed "
                             f"({err.strerror}: {err.filename}); {by_hand}") from None
        return f"removed work folder {self.on_nodes}"


def work_folder(settings: Settings, name: str) -> WorkVolume | SwarmHome:
    """Where ``name``'s work folder lives in this mode."""
    return SwarmHome(settings, name) if settings.mode == "swarm" else WorkVolume(settings, name)


def list_users(hub: Hub) -> list[dict]:
    r = hub.request("GET", "/users")
    r.raise_for_status()
    users = []
    for u in sorted(r.json(), key=lambda u: u["name"]):
        server = (u.get("servers") or {}).get("", {})
        users.append({
            "name": u["name"],
            "admin": u["admin"],
            "server": "ready" if server.get("ready") else ("starting" if server else "stopped"),
            "last_activity": u.get("last_activity"),
            "has_password": hub.user_info(u["name"]) is not None,
            "groups": sorted(u.get("groups") or []),
        })
    return users


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m gpuhub.usercli", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("add", help="create a user; password on stdin")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true")
    p = sub.add_parser("passwd", help="change a password; new password on stdin")
    p.add_argument("name")
    p = sub.add_parser("delete", help="delete a user and stop their lab")
    p.add_argument("name")
    p.add_argument("--purge-data", action="store_true")
    sub.add_parser("list", help="list users as JSON")
    p = sub.add_parser("exists", help="exit 0 if the user exists, 3 if not")
    p.add_argument("name")
    args = parser.parse_args(argv)
    try:
        hub = Hub()
        if args.cmd == "add":
            print(add(hub, args.name, read_password(sys.stdin), args.admin))
        elif args.cmd == "passwd":
            print(passwd(hub, args.name, read_password(sys.stdin)))
        elif args.cmd == "delete":
            print(delete(hub, args.name, args.purge_data))
        elif args.cmd == "list":
            print(json.dumps(list_users(hub)))
        elif args.cmd == "exists":
            return 0 if hub.user_info(args.name) is not None else 3
    except (Refused, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Unfinished as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
