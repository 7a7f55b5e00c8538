"""Tasks that manage hub users: adduser, passwd, deluser, users.

Passwords are asked for twice (hidden) or read from stdin with --password-stdin, and
handed to the hub container on stdin: never on a command line or in the environment.
"""

from __future__ import annotations

import getpass
import json as jsonlib
import shlex
import sys

from invoke import task

from ..accounts import MIN_PASSWORD_LENGTH, check_username
from .project import fail, load, require_running
from .stack import _run_usercli


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


@task(help={"name": "User name (lowercase letters, digits, _ or -, starting with a letter).",
            "admin": "Make the user a hub admin.",
            "password-stdin": "Read the password from stdin instead of asking twice."})
def adduser(c, name, admin=False, password_stdin=False):
    """Create a user who can log in at once (asks for the password twice, hidden)."""
    project = load()
    name = _valid_name(name)
    require_running(c, project)
    password = read_new_password(password_stdin)
    flag = " --admin" if admin else ""
    print(_run_usercli(c, project, f"add {shlex.quote(name)}{flag}", stdin=password).stdout.strip())


@task(help={"name": "User whose password changes.",
            "password-stdin": "Read the new password from stdin instead of asking twice."})
def passwd(c, name, password_stdin=False):
    """Change a user's password."""
    project = load()
    name = _valid_name(name)
    require_running(c, project)
    # Refuse an unknown user before asking for a password nobody will use.
    exists = c.run(project.exec_hub(f"python3 -m gpuhub.usercli exists {shlex.quote(name)}"),
                   env=project.env(), hide=True, warn=True, in_stream=False)
    if exists.return_code == 3:
        raise fail(f"no user {name!r}; see `invoke users`, or create it with `invoke adduser {name}`")
    password = read_new_password(password_stdin)
    print(_run_usercli(c, project, f"passwd {shlex.quote(name)}", stdin=password).stdout.strip())


@task(help={"name": "User to delete (their lab is stopped first).",
            "purge-data": "Also delete the user's work folder volume (cannot be undone)."})
def deluser(c, name, purge_data=False):
    """Delete a user; their work folder is kept unless --purge-data."""
    project = load()
    name = _valid_name(name)
    require_running(c, project)
    flag = " --purge-data" if purge_data else ""
    print(_run_usercli(c, project, f"delete {shlex.quote(name)}{flag}").stdout.strip())


@task(help={"json": "Print JSON instead of a table."})
def users(c, json=False):
    """List users: admin flag, lab state, last activity."""
    project = load()
    require_running(c, project)
    rows = jsonlib.loads(_run_usercli(c, project, "list").stdout)
    if json:
        print(jsonlib.dumps(rows, indent=2))
        return
    print(f"{'USER':<24}{'ADMIN':<7}{'LAB':<10}LAST ACTIVITY")
    for r in rows:
        print(f"{r['name']:<24}{'yes' if r['admin'] else 'no':<7}{r['server']:<10}"
              f"{r['last_activity'] or '-'}")
