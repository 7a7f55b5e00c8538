"""User administration inside the hub container: ``python3 -m gpuhub.services.usercli``.

`invoke adduser/passwd/deluser/users` run this with ``docker compose exec``; passwords
arrive on stdin, never as arguments (they would show in ``ps`` and ``docker inspect``).
Passwords go to NativeAuthenticator's table (bcrypt hashes) in the hub database; the
JupyterHub user itself is created and deleted through the Hub REST API, so the running
hub knows about every change at once.

Exit status: 0 done, 2 refused (one line on stderr says why and what to do), 1 failure
(one line says what was done and what is left to do by hand); ``exists`` exits 3 for a
user without a password, and ``add --if-missing`` exits 3 (ALREADY) for one that has one.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import bcrypt
import requests

from gpuhub.core import names, workuse
from gpuhub.core.accounts import check_password, check_username
from gpuhub.core.settings import validate
from gpuhub.services.workfolders import Unfinished, work_folder

HUB_API = "http://127.0.0.1:8081/hub/api"
ALREADY = names.USERCLI_ALREADY  # `add --if-missing` of a user who has a password already


NATIVE = "nativeauthenticator"


def native_folder() -> Path:
    """NativeAuthenticator's package folder, found without importing the package."""
    spec = importlib.util.find_spec(NATIVE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{NATIVE} is not installed in this image")
    return Path(next(iter(spec.submodule_search_locations)))


def user_info_table():
    """NativeAuthenticator's password table (``nativeauthenticator.orm.UserInfo``).

    Its module is loaded without the package's ``__init__``, which imports the authenticator
    and with it the Hub's web handlers: 0.35 s of the 1.2 s this process took for every user
    task (`python -X importtime` in the hub image). It is registered under its own name, so
    an ``import nativeauthenticator`` later in the process gets this very table. A version
    whose module needs more of its package is imported the plain way.
    """
    name = f"{NATIVE}.orm"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, native_folder() / "orm.py")
        if spec is None or spec.loader is None:
            importlib.import_module(name)
        else:
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
                module.UserInfo  # noqa: B018 (the name this file needs)
            except (ImportError, AttributeError):
                del sys.modules[name]
                importlib.import_module(name)
    return sys.modules[name].UserInfo


class Refused(Exception):
    """The request is wrong (user input); nothing was changed."""


def read_password(stream) -> str:
    line = stream.readline()
    return line[:-1] if line.endswith("\n") else line

# How long deluser waits for the user's lab to stop (a pending start is cancelled first).
STOP_TIMEOUT = 60


class Hub:
    """The Hub REST API (with the gpuhub-admin service token) and the hub database."""

    def __init__(self, data_dir: Path = Path(names.HUB_DATA_DIR), api: str = HUB_API):
        self.api = api
        token = (data_dir / names.ADMIN_TOKEN_FILE).read_text().strip()
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
            import jupyterhub.orm as orm
            user_info_table()  # registers the table
            self._db = orm.new_session_factory(self.db_url)()
        return self._db

    def user_info(self, name: str):
        return user_info_table().find(self.db, name)

    def hub_user(self, name: str) -> dict | None:
        r = self.request("GET", f"/users/{name}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()


def check_not_common(password: str) -> None:
    """The same common-password list the hub's web form uses (NativeAuthenticator's)."""
    path = native_folder() / "common-credentials.txt"
    try:
        common = set(path.read_text().splitlines())
    except OSError as e:  # fail closed: a password not checked is not taken
        raise Refused(f"cannot check the password against the common-password list "
                      f"({path}: {e.strerror}); nothing was changed") from e
    if password in common:
        raise Refused("that password is on the list of common passwords; choose another")


def _hash(password: str) -> bytes:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt())


def add(hub: Hub, name: str, password: str, admin: bool) -> str:
    UserInfo = user_info_table()  # noqa: N806 (a class)
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
            ok = True
        if not ok:
            raise Refused(f"the hub refused to create {name!r}: {r.status_code} {r.text[:200]}")
    finally:
        if not ok:
            # Leave nothing half-created behind, also when the hub did not answer.
            hub.db.delete(hub.user_info(name))
            hub.db.commit()
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


def stop_lab(hub: Hub, name: str, timeout: float = STOP_TIMEOUT) -> None:
    """Stop ``name``'s lab, a pending start included (the hub cancels it and removes what
    it made), and wait until the hub says it is gone; Refused if it is not by ``timeout``."""
    server = ((hub.hub_user(name) or {}).get("servers") or {}).get("")
    if not server:
        return
    r = hub.request("DELETE", f"/users/{name}/server")
    if r.status_code not in (202, 204, 404):
        raise Refused(f"the hub could not stop {name}'s lab: {r.status_code} {r.text[:200]}")
    deadline = time.monotonic() + timeout
    while ((hub.hub_user(name) or {}).get("servers") or {}).get(""):
        if time.monotonic() > deadline:
            raise Refused(f"{name}'s lab did not stop within {timeout:.0f} s; try again, "
                          "or see `invoke logs`")
        time.sleep(0.5)


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
        # First the lab, also a start still waiting in line or booting (JupyterHub would
        # delete the user but leave that start running, to make a lab nobody owns).
        stop_lab(hub, name)
        # Then the user; NativeAuthenticator removes its password row.
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


def work_folder_report() -> dict[str, workuse.FolderUse] | None:
    """Each work folder's use from the broker (WORK_QUOTA); None without a quota or report."""
    if validate(os.environ).work_quota == "none":
        return None
    try:
        return workuse.fetch(os.environ.get("DOCKER_HOST", ""))
    except (OSError, ValueError) as err:
        print(f"warning: no work-folder use from docker-proxy ({err})", file=sys.stderr)
        return None


def list_users(hub: Hub) -> list[dict]:
    r = hub.request("GET", "/users")
    r.raise_for_status()
    report = work_folder_report()
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
            # WORK_QUOTA: bytes in the user's work folder and its limit; None: no quota.
            "work_folder": (None if report is None else
                            dataclasses.asdict(workuse.of_user(report, u["name"]) or
                                               workuse.FolderUse(0, 0))),
        })
    return users


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m gpuhub.services.usercli", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("add", help="create a user; password on stdin")
    p.add_argument("name")
    p.add_argument("--admin", action="store_true")
    p.add_argument("--if-missing", action="store_true",
                   help=f"a user who has a password already is left as is (exit {ALREADY})")
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
            if args.if_missing and hub.user_info(args.name) is not None:
                return ALREADY
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
