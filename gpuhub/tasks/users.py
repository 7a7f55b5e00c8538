"""Tasks that manage hub users: adduser, passwd, deluser, users.

Passwords are asked for twice (hidden) or read from stdin with --password-stdin, and
handed to the hub container on stdin: never on a command line or in the environment.
deluser keeps the user's work folder unless --purge-data; adduser then refuses the same
name until the admin either hands that folder over (--reuse-data) or deletes it.
"""

from __future__ import annotations

import getpass
import json as jsonlib
import shlex
import sys

from invoke import task

from gpuhub.core import workuse
from gpuhub.core.accounts import MIN_PASSWORD_LENGTH, check_username
from gpuhub.tasks.deployment import USERCLI, fail, require_running, run_usercli, stderr_tail
from gpuhub.tasks.project import load


def _valid_name(name: str) -> str:
    try:
        return check_username(name)
    except ValueError as err:
        raise fail(str(err)) from None


def read_new_password(password_stdin: bool, stream=None, prompt=getpass.getpass) -> str:
    """Read a new password: one line from stdin, or asked twice without echo."""
    if password_stdin:
        line = (stream or sys.stdin).readline()
        password = line[:-1] if line.endswith("\n") else line
    else:
        if not (stream or sys.stdin).isatty():
            raise fail("no terminal to ask for the password; pipe it in with --password-stdin")
        password = prompt("New password: ")
        if password != prompt("Repeat it: "):
            raise fail("the two passwords differ; nothing was changed")
    if not password:
        raise fail(f"the password is empty; give at least {MIN_PASSWORD_LENGTH} characters")
    return password


def work_folder(project, name: str):
    """Where ``name``'s work folder lives in this mode, as this host sees it."""
    return project.stack.work_folder(project, name)


def native_accounts_only(project, task: str) -> None:
    """Refuse a task that makes or changes passwords when accounts live in a directory."""
    mode = project.settings.authenticator
    if mode == "native":
        return
    where = project.settings.ldap_url if mode == "ldap" else project.settings.oidc_issuer
    raise fail(f"AUTHENTICATOR={mode}: accounts and passwords live in the directory ({where}), "
               f"not in gpuhub, so `invoke {task}` has nothing to do; add or change the "
               "account there (and put it in ALLOWED_GROUPS): the hub user appears at its "
               "first login (`invoke users` lists who has logged in)")


def _has_account(c, project, name: str) -> bool:
    """Whether ``name`` has a password in the hub (`usercli exists`)."""
    found = c.run(project.exec_hub(f"{USERCLI} exists {shlex.quote(name)}"), env=project.env(),
                  hide=True, warn=True, in_stream=False)
    if found.return_code not in (0, 3):
        raise fail(f"could not check whether user {name!r} exists: {stderr_tail(found)}")
    return found.return_code == 0


@task(help={"name": "User name (lowercase letters, digits, _ or -, starting with a letter).",
            "admin": "Make the user a hub admin.",
            "password-stdin": "Read the password from stdin instead of asking twice.",
            "reuse-data": "Give the new user the work folder an earlier user of the same "
                          "name left behind (deluser keeps it); without this, adduser "
                          "refuses while that folder exists."})
def adduser(c, name, admin=False, password_stdin=False, reuse_data=False):
    """Create a user who can log in at once (asks for the password twice, hidden)."""
    project = load()
    native_accounts_only(project, "adduser")
    name = _valid_name(name)
    require_running(c, project)
    # A new person must not get a deleted user's files without the admin saying so.
    folder = work_folder(project, name)
    # The folder first: asking the hub whether the account exists is the slower check.
    kept = folder.exists(c) and not _has_account(c, project, name)
    if kept and not reuse_data:
        raise fail(f"{folder.what} already exists, kept from an earlier user named {name!r}: "
                   f"give those files to the new user with `invoke adduser {name} "
                   f"--reuse-data`, or delete them first with `invoke deluser {name} "
                   f"--purge-data` (or {folder.by_hand})")
    password = read_new_password(password_stdin)
    flag = " --admin" if admin else ""
    print(run_usercli(c, project, f"add {shlex.quote(name)}{flag}", stdin=password).stdout.strip())
    if kept:
        print(f"{name} now has the {folder.what}, left by the earlier user of that name")


@task(help={"name": "User whose password changes.",
            "password-stdin": "Read the new password from stdin instead of asking twice."})
def passwd(c, name, password_stdin=False):
    """Change a user's password."""
    project = load()
    native_accounts_only(project, "passwd")
    name = _valid_name(name)
    require_running(c, project)
    # Refuse an unknown user before asking for a password nobody will use.
    exists = c.run(project.exec_hub(f"python3 -m gpuhub.services.usercli exists {shlex.quote(name)}"),
                   env=project.env(), hide=True, warn=True, in_stream=False)
    if exists.return_code == 3:
        raise fail(f"no user {name!r}; see `invoke users`, or create it with `invoke adduser {name}`")
    password = read_new_password(password_stdin)
    print(run_usercli(c, project, f"passwd {shlex.quote(name)}", stdin=password).stdout.strip())


@task(help={"name": "User to delete (their lab is stopped first).",
            "purge-data": "Also delete the user's work folder: the Docker volume, or in swarm "
                          "mode the folder under SWARM_HOMES (cannot be undone). Also works "
                          "once the user is gone, on the folder deluser kept."})
def deluser(c, name, purge_data=False):
    """Delete a user; their work folder is kept unless --purge-data."""
    project = load()
    name = _valid_name(name)
    require_running(c, project)
    flag = " --purge-data" if purge_data else ""
    print(run_usercli(c, project, f"delete {shlex.quote(name)}{flag}").stdout.strip())


@task(help={"json": "Print JSON instead of a table."})
def users(c, json=False):
    """List users: admin flag, lab state, last activity, work folder use (WORK_QUOTA)."""
    project = load()
    require_running(c, project)
    rows = jsonlib.loads(run_usercli(c, project, "list").stdout)
    if json:
        print(jsonlib.dumps(rows, indent=2))
        return
    quota = any(r.get("work_folder") is not None for r in rows)
    print(f"{'USER':<24}{'ADMIN':<7}{'LAB':<10}{'LAST ACTIVITY':<30}"
          + (f"{'WORK FOLDER':<26}" if quota else "") + "GROUPS")
    for r in rows:
        folder = r.get("work_folder")
        use = workuse.text(workuse.FolderUse(**folder) if folder and folder["limit"] else None)
        print(f"{r['name']:<24}{'yes' if r['admin'] else 'no':<7}{r['server']:<10}"
              f"{r['last_activity'] or '-':<30}" + (f"{use:<26}" if quota else "")
              + f"{','.join(r['groups']) or '-'}")
