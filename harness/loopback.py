"""``localhost`` and every ``*.localhost`` name resolve to 127.0.0.1 in this process.

Browsers resolve ``*.localhost`` to loopback themselves (RFC 6761); glibc here does not.
The hub serves each user's lab at ``<user>.HUB_DOMAIN`` (``<user>.localhost`` in test
stacks), so the tests' Python clients resolve those names as a browser does, and only
to loopback: nothing else changes.
"""

from __future__ import annotations

import socket

_system_getaddrinfo = socket.getaddrinfo


def is_loopback_name(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def _getaddrinfo(host, *args, **kwargs):
    return _system_getaddrinfo("127.0.0.1" if is_loopback_name(host) else host, *args, **kwargs)


def install() -> None:
    """Resolve (``*.``)``localhost`` to 127.0.0.1 from now on; harmless to call again."""
    socket.getaddrinfo = _getaddrinfo
