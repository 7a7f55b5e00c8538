"""gpuhub.hub.jupyterhubfixes against the pinned JupyterHub's own code."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from jupyterhub.user import User, _SpawnerDict

from gpuhub.hub import jupyterhubfixes


class FakeSpawner:
    def __init__(self, name: str, failed: bool = False):
        self.name, self._failed, self._log_name = name, failed, name


def a_user_whose_last_start_failed():
    made = []

    def new_spawner(name):
        made.append(FakeSpawner(name))
        return made[-1]

    user = SimpleNamespace(spawners=_SpawnerDict(new_spawner), log=logging.getLogger("test"),
                           _new_spawner=new_spawner)
    user.spawners[""] = FakeSpawner("", failed=True)
    made.clear()
    return user, made


@pytest.fixture
def unfixed(monkeypatch):
    monkeypatch.setattr(User, "get_spawner", User.get_spawner)  # restored after the test
    import aiohttp.connector
    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", aiohttp.connector.DefaultResolver)
    return User.get_spawner


def test_the_pinned_jupyterhub_leaves_a_replaced_spawner_out_of_user_spawners(unfixed):
    # What the fix is for: without it, the POST's spawner is not the one that starts.
    if getattr(unfixed, jupyterhubfixes._INSTALLED, False):
        pytest.skip("installed by an earlier import in this process")
    user, made = a_user_whose_last_start_failed()
    replaced = unfixed(user, "", replace_failed=True)
    assert not replaced._failed
    assert dict.get(user.spawners, "") is not replaced, (
        "JupyterHub keeps the replacement itself now: drop fix 1 of gpuhub.hub.jupyterhubfixes")


def test_with_the_fix_the_replacement_is_the_users_spawner_and_made_once(unfixed):
    jupyterhubfixes.install()
    jupyterhubfixes.install()  # twice: wrapped once
    user, made = a_user_whose_last_start_failed()
    replaced = User.get_spawner(user, "", replace_failed=True)
    assert user.spawners[""] is replaced and not replaced._failed
    assert made == [replaced], "no second spawner made on lookup"
    # A spawner that did not fail is returned as it is.
    assert User.get_spawner(user, "", replace_failed=True) is replaced
    assert not getattr(User.get_spawner.__wrapped__, jupyterhubfixes._INSTALLED, False)


def _resolver_of_the_hubs_client():
    """The resolver of the connector JupyterHub's own HTTP client makes."""
    import asyncio

    from jupyterhub.httpclient import JupyterHubHTTPClient

    async def made():
        connector = JupyterHubHTTPClient()._new_connector()
        try:
            return type(connector._resolver)
        finally:
            await connector.close()

    return asyncio.run(made())


def test_the_hubs_client_resolves_names_afresh(monkeypatch):
    import aiohttp.connector
    import aiohttp.resolver

    # aiohttp's own choice (another test may have installed the fixes already).
    monkeypatch.setattr(aiohttp.connector, "DefaultResolver", aiohttp.resolver.DefaultResolver)
    # What the fix is for: JupyterHub 6 requires aiodns, so aiohttp asks c-ares, which keeps
    # an answer for its TTL (Docker's DNS: 600 s).
    assert _resolver_of_the_hubs_client() is aiohttp.resolver.AsyncResolver
    jupyterhubfixes.fresh_name_lookups()
    assert _resolver_of_the_hubs_client() is aiohttp.resolver.ThreadedResolver


def test_a_hub_without_aiohttp_starts(monkeypatch):
    """JUPYTERHUB_VERSION=5.x: no aiohttp in the hub image; the fix is a no-op there."""
    import builtins

    real_import = builtins.__import__

    def no_aiohttp(name, *args, **kwargs):
        if name.split(".")[0] == "aiohttp":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_aiohttp)
    jupyterhubfixes.fresh_name_lookups()  # no error
