"""The certificate and key `invoke up` hands the proxy (TLS_CERT, TLS_KEY): checked, and
their digest (so that a renewed pair recreates the proxy)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
from pathlib import Path

from gpuhub.tasks.deployment import Project, fail

_PEM_MARKERS = {"TLS_CERT": ("CERTIFICATE", "certificate"), "TLS_KEY": ("PRIVATE KEY", "private key")}


def resolve(project: Project, value: str) -> Path:
    """A TLS path as compose reads it: absolute, or relative to the repository."""
    return project.path(value)


def check_files(project: Project) -> None:
    """Exit with one line unless TLS is off or both files exist, are readable and are PEM."""
    s = project.settings
    if not s.tls_cert:
        return
    for name, value in (("TLS_CERT", s.tls_cert), ("TLS_KEY", s.tls_key)):
        path = resolve(project, value)
        if not path.is_file():
            raise fail(f"{name}={value!r}: there is no file {str(path)!r}; fix the path, "
                       "or make a pair for testing with `invoke tls-selfsigned`")
        if not os.access(path, os.R_OK):
            raise fail(f"{name}={value!r}: {str(path)!r} is not readable by this user; "
                       "fix its owner or mode (the key should be mode 0600, yours)")
        marker, what = _PEM_MARKERS[name]
        head = path.read_bytes()[:65536].decode("ascii", errors="replace")
        if not re.search(rf"-----BEGIN [A-Z ]*{marker}-----", head):
            raise fail(f"{name}={value!r}: {str(path)!r} is not a PEM {what} (no "
                       f"'-----BEGIN … {marker}-----' line); convert it to PEM or fix the path")
        if name == "TLS_KEY" and stat.S_IMODE(path.stat().st_mode) & 0o077:
            print(f"warning: TLS_KEY {str(path)!r} is readable by other users "
                  f"(mode {stat.S_IMODE(path.stat().st_mode):04o}); `chmod 600` it",
                  file=sys.stderr)


def files_digest(project: Project) -> str:
    """SHA-256 over the certificate and key ("" without TLS).

    docker-compose.tls.yml hands it to the proxy as an environment variable, so `invoke up`
    recreates the proxy (which reads the pair only at start) when a renewed pair is in place.
    """
    s = project.settings
    if not s.tls_cert:
        return ""
    digest = hashlib.sha256()
    for value in (s.tls_cert, s.tls_key):
        digest.update(resolve(project, value).read_bytes())
    return digest.hexdigest()
