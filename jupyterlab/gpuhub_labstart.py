"""A leaner start for the lab's Jupyter server: the same server, without two import costs.

Installed into the lab image's site-packages. Importing ``jupyterhub.singleuser`` pays, at
every lab start, for two imports that the start does not need (the hub image installs this
file and its ``.pth`` too, for the first one: ``jupyterhub`` pays it at every hub start):

- ``rfc3987_syntax``, which builds a Lark grammar when imported. jsonschema imports it for
  its ``iri`` format check, jupyter_events imports jsonschema, and so every Jupyter server
  start pays it although no Jupyter schema uses that format
  (python-jsonschema/jsonschema#1428). ``defer_rfc3987_syntax()`` makes the import lazy:
  the grammar is built on the first ``iri`` check, if one ever comes. The lab image calls it
  from a ``.pth`` file, so every Python in a lab (server and kernels) has it.
- the Hub's database layer (``jupyterhub.orm``, SQLAlchemy, Alembic), which
  ``jupyterhub.singleuser`` pulls in only because ``jupyterhub.log`` checks whether a request
  was the Hub's own health check. ``main()`` imports ``jupyterhub.log`` without it: a lab has
  no Hub health-check handler, so that check is false either way. And SQLAlchemy itself
  (0.19 s of a 1.5-s lab start, measured with ``python -X importtime`` in the lab image):
  ``jupyterhub.utils`` imports ``SQLAlchemyError`` only for ``catch_db_error``, which
  decorates the Hub's database handlers; a lab has no database, so there a stand-in class
  that nothing raises catches the same (nothing).

Both are undone by themselves when something really needs the module, and ``main()`` falls
back to the plain import (with a warning) if a JupyterHub version no longer matches.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

RFC3987 = "rfc3987_syntax"


class _DeferredRfc3987(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Hand out ``rfc3987_syntax`` as a stand-in that imports the real one when used."""

    def find_spec(self, fullname, path, target=None):
        if fullname != RFC3987:
            return None
        real = importlib.machinery.PathFinder.find_spec(fullname, path)
        if real is None:  # not installed: nothing to defer (jsonschema skips the check)
            return None
        spec = importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        # Its submodules stay importable as themselves (only the package's body is deferred).
        spec.submodule_search_locations = real.submodule_search_locations
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        finder = self

        def real():
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            if sys.modules.get(RFC3987) is module:
                del sys.modules[RFC3987]
            return importlib.import_module(RFC3987)

        def is_valid_syntax(term, value):
            return real().is_valid_syntax(term, value)

        def __getattr__(name):  # noqa: N807 (module-level __getattr__, PEP 562)
            if name.startswith("__"):  # the import system's probes must not load it
                raise AttributeError(name)
            return getattr(real(), name)

        module.is_valid_syntax = is_valid_syntax
        module.__getattr__ = __getattr__


def defer_rfc3987_syntax() -> None:
    """Make ``import rfc3987_syntax`` cheap until its parser is used (idempotent)."""
    if RFC3987 in sys.modules or any(isinstance(f, _DeferredRfc3987) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _DeferredRfc3987())


class _LazyOnce(importlib.abc.MetaPathFinder):
    """Import the named module with ``importlib.util.LazyLoader``: its body runs on first use."""

    def __init__(self, name: str):
        self.name = name

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


class _Deferred:
    """Stands in for one name of a module that is imported only when the name is used
    (called, or an attribute of it read)."""

    def __init__(self, module: str, name: str):
        self._module, self._name = module, name

    def _real(self):
        return getattr(importlib.import_module(self._module), self._name)

    def __getattr__(self, attr):
        return getattr(self._real(), attr)

    def __call__(self, *args, **kwargs):
        return self._real()(*args, **kwargs)


def _deferred_module(name: str) -> types.ModuleType:
    """A stand-in for module ``name``: each name taken from it is a ``_Deferred``."""
    module = types.ModuleType(name)

    def __getattr__(attr):  # noqa: N807 (module-level __getattr__, PEP 562)
        if attr.startswith("__"):  # the import system's probes
            raise AttributeError(attr)
        return _Deferred(name, attr)

    module.__getattr__ = __getattr__
    return module


def _import_with_stand_ins(target: str, stand_ins: dict[str, types.ModuleType],
                           finders: tuple = ()) -> str:
    """Import ``target`` while ``stand_ins`` (and ``finders``) are in place, then take them
    away: anything imported later gets the real modules. Returns what went wrong ("" when
    nothing did: SQLAlchemy was not imported for real meanwhile either). Then nothing that
    saw a stand-in stays (a SQLAlchemy that met the stand-in of its errors module, a module
    that took a name from a stand-in): it is imported again, plainly, when needed. Modules
    that did not see one stay, so nothing registers its metrics twice."""
    placed = {name: module for name, module in stand_ins.items() if name not in sys.modules}
    sys.modules.update(placed)
    sys.meta_path[:0] = finders
    imported_before = set(sys.modules)
    problem = ""
    try:
        importlib.import_module(target)
    except Exception as err:  # whatever broke, the lab starts the plain way
        problem = f"{type(err).__name__}: {err}"
    finally:
        for name, module in placed.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
        for finder in finders:
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
    new = set(sys.modules) - imported_before
    if not problem and "sqlalchemy" in new:
        problem = "SQLAlchemy itself was imported meanwhile"
    if problem:
        seen = {id(m) for m in placed.values()} | {
            id(v) for m in placed.values() for v in vars(m).values()}

        def saw_a_stand_in(module) -> bool:
            return any(id(v) in seen or isinstance(v, _Deferred)
                       for v in list(vars(module).values()))

        for name in new | {target}:
            module = sys.modules.get(name)
            if module is not None and (name == target or name.partition(".")[0] == "sqlalchemy"
                                       or saw_a_stand_in(module)):
                del sys.modules[name]
    return problem


def _plain_start(problem: str) -> None:
    print(f"gpuhub-singleuser: plain start ({problem}); the lean start does not match this "
          "JupyterHub version", file=sys.stderr)


def import_hub_log_without_database() -> bool:
    """Import ``jupyterhub.log`` without the Hub's handlers and database layer.

    Returns False (and leaves a plain import to the caller) when this JupyterHub's
    ``jupyterhub.log`` needs more from its handlers than the health-check class, or more
    of SQLAlchemy than ``SQLAlchemyError``.
    """
    if "jupyterhub.log" in sys.modules:
        return False
    pages = types.ModuleType("jupyterhub.handlers.pages")

    class HealthCheckHandler:
        """Never instantiated in a lab: ``isinstance(handler, HealthCheckHandler)`` is False."""

    pages.HealthCheckHandler = HealthCheckHandler
    stand_ins = {pages.__name__: pages}
    if "sqlalchemy" not in sys.modules and "jupyterhub.utils" not in sys.modules:
        errors = types.ModuleType("sqlalchemy.exc")

        class SQLAlchemyError(Exception):
            """Never raised in a lab: it has no database."""

        errors.SQLAlchemyError = SQLAlchemyError
        stand_ins[errors.__name__] = errors
    problem = _import_with_stand_ins("jupyterhub.log", stand_ins,
                                     (_LazyOnce("jupyterhub.orm"),))
    if problem:
        _plain_start(problem)
    return not problem


def import_singleuser_without_sqlalchemy(target: str = "jupyterhub.singleuser") -> bool:
    """Import ``jupyterhub.singleuser`` with SQLAlchemy deferred: ``jupyterhub.scopes`` and
    ``jupyterhub.roles`` (imported by the lab's Hub authentication) use it only in the Hub's
    database queries, so each name they take from it stands in until it is used. False
    (after a plain import) when that does not work with this JupyterHub."""
    if target in sys.modules or "sqlalchemy" in sys.modules:
        return False
    problem = _import_with_stand_ins(target, {"sqlalchemy": _deferred_module("sqlalchemy")})
    if problem:
        _plain_start(problem)
        importlib.import_module(target)
    return not problem


def fresh_name_lookups() -> None:
    """Resolve the hub's name afresh: JupyterHub 6's client (aiohttp with aiodns) keeps an
    answer for its DNS TTL (600 s from Docker), so after the hub came back at a new address
    (a restart or an upgrade in Swarm mode) the lab answered 500 ("Failed to connect to Hub
    API") for minutes. ``getaddrinfo``, as JupyterHub 5 used; aiohttp still caches 10 s.
    The hub does the same (gpuhub/hub/jupyterhubfixes.py)."""
    try:
        import aiohttp.connector
        import aiohttp.resolver
    except ImportError:  # a JupyterHub without aiohttp resolves with the system already
        return
    aiohttp.connector.DefaultResolver = aiohttp.resolver.ThreadedResolver


# Swarm mode: how many GPUs Swarm granted this lab (the spawner sets it; absent in compose).
SWARM_GPUS = "GPUHUB_SWARM_GPUS"


def missing_swarm_gpus(environ=None, run=None) -> str:
    """Why this Swarm lab must not start ("" when it may): Swarm granted GPUs, but the
    node's NVIDIA runtime gave it fewer. Toolkit 1.18.x ignores swarm-resource in its
    default mode (fixed in 1.19.0), so a lab would hold a GPU in Swarm's books and get none."""
    import os
    import subprocess

    environ = os.environ if environ is None else environ
    try:
        wanted = int(environ.get(SWARM_GPUS, "0") or 0)
    except ValueError:
        return ""
    if wanted <= 0:
        return ""
    run = run or (lambda: subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                         timeout=30).stdout)
    try:
        listed = run()
    except (OSError, subprocess.SubprocessError):
        listed = ""
    seen = sum(1 for line in listed.splitlines() if line.strip().startswith(("GPU ", "MIG ")))
    granted = {k: v for k, v in environ.items() if k.startswith("DOCKER_RESOURCE_")}
    if seen >= wanted:
        return ""
    return (f"gpuhub: Swarm granted this lab {wanted} GPU(s) "
            f"({', '.join(f'{k}={v}' for k, v in sorted(granted.items())) or 'no DOCKER_RESOURCE_ variable'}),"
            f" but this node's NVIDIA runtime gave it {seen}: NVIDIA container toolkit 1.18.x "
            "ignores swarm-resource; upgrade the node's toolkit to 1.19 or newer, or set "
            'mode = "legacy" in its config.toml (`invoke doctor` on the node checks it)')


def main() -> None:
    """``jupyterhub-singleuser``, leaner (the lab image's command)."""
    missing = missing_swarm_gpus()
    if missing:
        print(missing, file=sys.stderr, flush=True)
        sys.exit(1)
    defer_rfc3987_syntax()
    import_hub_log_without_database()
    fresh_name_lookups()
    import_singleuser_without_sqlalchemy()
    from jupyterhub.singleuser import main as singleuser_main

    sys.exit(singleuser_main())


if __name__ == "__main__":
    main()
