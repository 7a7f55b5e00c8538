"""Account rules shared by the tasks (host), the user CLI and the authenticator (hub)."""

from __future__ import annotations

import re

USERNAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
USERNAME_RULE = "1-32 characters: lowercase letters, digits, '_' or '-', starting with a letter"
MIN_PASSWORD_LENGTH = 8


def check_username(name: str) -> str:
    """Return ``name`` if gpuhub accepts it as a user name, else raise ValueError."""
    if not re.fullmatch(USERNAME_PATTERN, name or ""):
        shown = name if len(name or "") <= 40 else name[:40] + "…"
        raise ValueError(f"invalid user name {shown!r}: use {USERNAME_RULE}")
    return name


def check_password(password: str) -> str:
    """Return ``password`` if it meets the policy, else raise ValueError saying why."""
    if not password:
        raise ValueError(f"the password is empty; use at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password is too short ({len(password)} characters); "
                         f"use at least {MIN_PASSWORD_LENGTH}")
    if password.strip() != password:
        raise ValueError("the password starts or ends with white space; remove it")
    return password
