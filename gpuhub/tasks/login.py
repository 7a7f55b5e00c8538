"""The files a directory login needs on the host (AUTHENTICATOR=ldap or oidc): checked
before Docker is touched, and stamped so that `invoke up` recreates the hub (which reads
them only at start) when one was replaced, e.g. a rotated bind password."""

from __future__ import annotations

import hashlib
import os
import stat
import sys

from gpuhub.tasks.deployment import Project, fail

SECRET_FILES = ("LDAP_BIND_PASSWORD_FILE", "OIDC_CLIENT_SECRET_FILE")
CA_FILES = ("LDAP_CA_FILE", "OIDC_CA_FILE")


def _files(project: Project) -> list[tuple[str, str]]:
    values = project.settings.values
    return [(name, values[name]) for name in (*SECRET_FILES, *CA_FILES) if values[name]]


def check_files(project: Project) -> None:
    """Exit with one line unless each login file the settings name is a readable file
    (secrets: not empty; CA files: PEM certificates)."""
    for name, value in _files(project):
        path = project.path(value)
        if not path.is_file():
            raise fail(f"{name}={value!r}: there is no file {str(path)!r}; fix the path")
        if not os.access(path, os.R_OK):
            raise fail(f"{name}={value!r}: {str(path)!r} is not readable by this user; fix "
                       "its owner or mode (0600, yours)")
        content = path.read_bytes()[:1_000_000]
        if name in SECRET_FILES:
            if not content.strip():
                raise fail(f"{name}={value!r}: {str(path)!r} is empty; put the secret in it "
                           "(one line)")
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                print(f"warning: {name} {str(path)!r} is readable by other users (mode "
                      f"{stat.S_IMODE(path.stat().st_mode):04o}); `chmod 600` it",
                      file=sys.stderr)
        elif b"-----BEGIN CERTIFICATE-----" not in content:
            raise fail(f"{name}={value!r}: {str(path)!r} holds no PEM certificate (no "
                       "'-----BEGIN CERTIFICATE-----' line); give the CA's certificate in PEM")


def files_stamp(project: Project) -> str:
    """A stamp of the login files (path, size, time and inode, never their content): it
    changes when one is replaced or rewritten."""
    digest = hashlib.sha256()
    for name, value in _files(project):
        info = project.path(value).stat()
        digest.update(f"{name}={value}:{info.st_size}:{info.st_mtime_ns}:{info.st_ino}\n".encode())
    return digest.hexdigest() if _files(project) else ""
