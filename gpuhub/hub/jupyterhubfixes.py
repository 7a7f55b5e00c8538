"""Small adaptations to the pinned JupyterHub, each with the case it fixes and its test.

``install()`` runs once, from jupyterhub_config.py. Each fix checks that it still applies
(the JupyterHub code it adapts is what it expects) and is a no-op where it is not needed;
drop it once the pinned JupyterHub carries the fix upstream.

1. **A start after a failed start answers 201 while it waits** (JupyterHub 6.0 to 6.1.1).
   ``User.get_spawner(name, replace_failed=True)`` makes a new spawner for a failed one
   but, unlike 5.x, does not put it in ``user.spawners``: ``POST /users/:name/server``
   then holds a detached spawner (never pending), and the start itself runs on yet
   another one, made on lookup. The API answers 201 ("started") for a start still waiting
   (in line for a GPU), and two spawners are made per such start. Here the new spawner is
   put in ``user.spawners``, as 5.x did (``tests/unit/test_jupyterhubfixes.py``;
   ``tests/integration/test_waiting_line.py`` starts again after a failed wait).
2. **A name keeps the address it had for minutes** (JupyterHub 6.0 to 6.1.1). JupyterHub 6
   makes its requests with aiohttp and requires aiodns, so aiohttp resolves names with
   c-ares, whose query cache keeps an answer for its TTL: Docker's DNS gives 600 s. When a
   lab comes back at a new address (Swarm moved it to another node; a new container in
   compose mode), the hub kept connecting to the old one until the start timed out.
   ``fresh_name_lookups()`` makes aiohttp resolve with the system's resolver
   (``getaddrinfo``, as JupyterHub 5 did), keeping aiohttp's own 10-second cache. The lab
   needs the same for the hub's name (jupyterlab/gpuhub_labstart.py);
   ``tests/integration/test_swarm.py`` drains a node and restarts the hub.
"""

from __future__ import annotations

import functools

from jupyterhub.user import User

_INSTALLED = "_gpuhub_registers_replaced_spawner"


def install() -> None:
    fresh_name_lookups()
    original = User.get_spawner
    if getattr(original, _INSTALLED, False):
        return

    @functools.wraps(original)
    def get_spawner(self, server_name="", replace_failed=False):
        spawner = original(self, server_name, replace_failed)
        # dict.get: the spawners dict makes a spawner on a missing key with [] only.
        if dict.get(self.spawners, server_name) is not spawner:
            self.spawners[server_name] = spawner
        return spawner

    setattr(get_spawner, _INSTALLED, True)
    User.get_spawner = get_spawner


def fresh_name_lookups() -> None:
    """aiohttp's connectors resolve with ``getaddrinfo`` (no c-ares query cache). A no-op
    with JupyterHub 5 (JUPYTERHUB_VERSION), whose tornado client has no aiohttp and resolves
    with ``getaddrinfo`` already."""
    try:
        import aiohttp.connector
        import aiohttp.resolver
    except ImportError:
        return
    aiohttp.connector.DefaultResolver = aiohttp.resolver.ThreadedResolver
