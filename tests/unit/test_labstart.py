"""The lab image's lean start (jupyterlab/gpuhub_labstart.py), against stand-in packages.

Each test runs in a fresh interpreter: the module changes ``sys.meta_path`` and
``sys.modules``, which must not leak into the other tests.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

LABSTART = Path(__file__).resolve().parents[2] / "jupyterlab"


def run(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(f"""
            import sys
            sys.path[:0] = [{str(tmp_path)!r}, {str(LABSTART)!r}]
        """) + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def rfc3987(tmp_path: Path) -> Path:
    """A stand-in rfc3987_syntax whose body records that it ran (the real one builds a grammar)."""
    write(tmp_path, {
        "rfc3987_syntax/__init__.py": """
            import builtins
            builtins.RFC_BODY_RUNS = getattr(builtins, "RFC_BODY_RUNS", 0) + 1
            from .syntax_helpers import *
        """,
        "rfc3987_syntax/syntax_helpers.py": """
            TERMS = ["iri"]
            def is_valid_syntax(term, value):
                return term == "iri" and ":" in value
        """,
    })
    return tmp_path


def test_importing_rfc3987_syntax_is_deferred_until_a_check_runs(rfc3987: Path):
    result = run(rfc3987, """
        import builtins, gpuhub_labstart
        gpuhub_labstart.defer_rfc3987_syntax()
        gpuhub_labstart.defer_rfc3987_syntax()  # idempotent
        from rfc3987_syntax import is_valid_syntax   # what jsonschema does
        print(getattr(builtins, "RFC_BODY_RUNS", 0))
        print(is_valid_syntax("iri", "https://example.org"), is_valid_syntax("iri", "nope"))
        print(builtins.RFC_BODY_RUNS)
        import rfc3987_syntax
        print(rfc3987_syntax.TERMS, "syntax_helpers" in rfc3987_syntax.__file__ or "real")
        print(builtins.RFC_BODY_RUNS)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == ["0", "True False", "1", "['iri'] real"]
    assert result.stdout.split("\n")[4] == "1"  # loaded once, then the real module is used


def test_other_names_and_submodules_load_the_real_package(rfc3987: Path):
    result = run(rfc3987, """
        import gpuhub_labstart
        gpuhub_labstart.defer_rfc3987_syntax()
        import rfc3987_syntax
        print(rfc3987_syntax.TERMS)
        from rfc3987_syntax.syntax_helpers import is_valid_syntax
        print(is_valid_syntax("iri", "a:b"))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['iri']", "True"]


def test_without_rfc3987_syntax_nothing_is_deferred(tmp_path: Path):
    result = run(tmp_path, """
        import sys
        sys.path[:] = [p for p in sys.path if "-packages" not in p]  # hide any installed copy
        import gpuhub_labstart
        gpuhub_labstart.defer_rfc3987_syntax()
        try:
            import rfc3987_syntax
        except ImportError:
            print("absent")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "absent"  # as without gpuhub: jsonschema skips the check


HUB = {
    "jupyterhub/__init__.py": "",
    "jupyterhub/orm.py": """
        import builtins
        builtins.ORM_BODY_RUNS = True
        class User:
            pass
    """,
    "jupyterhub/metrics.py": """
        from . import orm
        def prometheus_log_method(handler):
            return "observed"
        def active_users(db):
            return orm.User.__name__
    """,
    "jupyterhub/handlers/__init__.py": """
        import builtins
        builtins.HANDLERS_RUN = True
        from . import pages
    """,
    "jupyterhub/handlers/pages.py": """
        from .. import orm
        class HealthCheckHandler:
            pass
    """,
    "jupyterhub/log.py": """
        from .handlers.pages import HealthCheckHandler
        from .metrics import prometheus_log_method
        def log_request(handler):
            return isinstance(handler, HealthCheckHandler), prometheus_log_method(handler)
    """,
}


def test_hub_log_is_imported_without_the_hub_handlers_and_database(tmp_path: Path):
    write(tmp_path, HUB)
    result = run(tmp_path, """
        import builtins, sys, gpuhub_labstart
        print(gpuhub_labstart.import_hub_log_without_database())
        from jupyterhub.log import log_request
        print(log_request(object()))
        print(hasattr(builtins, "HANDLERS_RUN"), hasattr(builtins, "ORM_BODY_RUNS"))
        print(sorted(m for m in sys.modules if m.startswith("jupyterhub.handlers")))
        # Nothing is broken for code that does need them later.
        import jupyterhub.metrics
        print(jupyterhub.metrics.active_users(None), hasattr(builtins, "ORM_BODY_RUNS"))
        from jupyterhub.handlers.pages import HealthCheckHandler
        print(HealthCheckHandler.__module__, hasattr(builtins, "HANDLERS_RUN"))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "True", "(False, 'observed')", "False False", "[]",
        "User True", "jupyterhub.handlers.pages True"]


def test_a_hub_log_that_needs_more_falls_back_to_the_plain_import(tmp_path: Path):
    write(tmp_path, {**HUB, "jupyterhub/log.py": """
        from .handlers.pages import HealthCheckHandler, PrefixRedirectHandler
        def log_request(handler):
            return isinstance(handler, HealthCheckHandler)
    """, "jupyterhub/handlers/pages.py": """
        class HealthCheckHandler:
            pass
        class PrefixRedirectHandler:
            pass
    """})
    result = run(tmp_path, """
        import sys, gpuhub_labstart
        print(gpuhub_labstart.import_hub_log_without_database())
        from jupyterhub import log
        from jupyterhub.handlers.pages import HealthCheckHandler
        print(log.log_request(HealthCheckHandler()))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]  # the real handler class, plain import
    assert "plain start" in result.stderr and "PrefixRedirectHandler" in result.stderr


SQLALCHEMY = {
    "sqlalchemy/__init__.py": """
        from . import exc
        REAL = exc.REAL
    """,
    "sqlalchemy/exc.py": """
        REAL = True
        class SQLAlchemyError(Exception):
            pass
    """,
}
HUB_WITH_UTILS = {**HUB, **SQLALCHEMY, "jupyterhub/utils.py": """
        from sqlalchemy.exc import SQLAlchemyError
        def catch_db_error():
            try:
                raise KeyError("not a database error")
            except SQLAlchemyError:
                return "caught"
            except KeyError:
                return "not caught"
    """, "jupyterhub/metrics.py": """
        from . import orm
        from .utils import catch_db_error
        def prometheus_log_method(handler):
            return "observed"
    """}


def test_sqlalchemy_is_not_imported_for_the_hubs_database_error_class(tmp_path: Path):
    write(tmp_path, HUB_WITH_UTILS)
    result = run(tmp_path, """
        import sys, gpuhub_labstart
        print(gpuhub_labstart.import_hub_log_without_database())
        print([m for m in sys.modules if m.startswith("sqlalchemy")])
        from jupyterhub import utils
        print(utils.catch_db_error())
        # Whoever needs SQLAlchemy later gets the real one.
        import sqlalchemy, sqlalchemy.exc
        print(sqlalchemy.REAL, sqlalchemy.exc.SQLAlchemyError is not utils.SQLAlchemyError)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True", "[]", "not caught", "True True"]


def test_a_hub_that_loads_sqlalchemy_meanwhile_falls_back_to_the_plain_import(tmp_path: Path):
    # Its log module uses the database at import: SQLAlchemy loads with the stand-in of
    # its errors module in place, and breaks; nothing of that attempt may stay.
    write(tmp_path, {**HUB_WITH_UTILS, "jupyterhub/orm.py": """
        import sqlalchemy
        class User:
            pass
    """, "jupyterhub/log.py": """
        from .handlers.pages import HealthCheckHandler
        from .metrics import prometheus_log_method
        from . import orm
        USER = orm.User
    """})
    result = run(tmp_path, """
        import sys, gpuhub_labstart
        print(gpuhub_labstart.import_hub_log_without_database())
        import jupyterhub.log, jupyterhub.utils, sqlalchemy
        print(sqlalchemy.REAL, jupyterhub.utils.SQLAlchemyError.__module__)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False", "True sqlalchemy.exc"]
    assert "plain start" in result.stderr


SINGLEUSER = {
    **HUB_WITH_UTILS,
    "sqlalchemy/__init__.py": """
        from . import exc
        REAL = exc.REAL
        def inspect(obj):
            return f"inspected {obj}"
    """,
    "jupyterhub/scopes.py": """
        import sqlalchemy as sa
        def session_of(obj):
            return sa.inspect(obj)
    """,
    "jupyterhub/singleuser/__init__.py": """
        from .. import scopes
        def main():
            return "lab"
    """,
}


def test_the_lab_imports_its_hub_authentication_without_sqlalchemy(tmp_path: Path):
    write(tmp_path, SINGLEUSER)
    result = run(tmp_path, """
        import sys, gpuhub_labstart
        print(gpuhub_labstart.import_hub_log_without_database(),
              gpuhub_labstart.import_singleuser_without_sqlalchemy())
        print([m for m in sys.modules if m.startswith("sqlalchemy")])
        from jupyterhub.singleuser import main
        from jupyterhub import scopes
        print(main(), "sqlalchemy" in sys.modules)
        # Used, a deferred name is the real one; later imports get the real module.
        print(scopes.session_of("x"), "sqlalchemy" in sys.modules)
        import sqlalchemy
        print(sqlalchemy.REAL)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["True True", "[]", "lab False", "inspected x True",
                                          "True"]


def test_a_lab_whose_hub_needs_more_of_sqlalchemy_imports_it_plainly(tmp_path: Path):
    write(tmp_path, {**SINGLEUSER, "jupyterhub/scopes.py": """
        from sqlalchemy.exc import SQLAlchemyError  # a submodule: the stand-in has none
        import sqlalchemy as sa
        def session_of(obj):
            return sa.inspect(obj)
    """})
    result = run(tmp_path, """
        import sys, gpuhub_labstart
        print(gpuhub_labstart.import_singleuser_without_sqlalchemy())
        from jupyterhub import scopes
        print(type(scopes.sa).__name__, scopes.sa.REAL, scopes.session_of("y"))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["False", "module True inspected y"]
    assert "plain start" in result.stderr


def test_the_pinned_jupyterhub_still_imports_its_log_without_handlers_or_database(tmp_path):
    # The stand-ins above copy what jupyterhub/log.py imports; this checks the JupyterHub
    # the unit tests run with (the pin in gpuhub/core/constraints.txt), as the lab image does.
    result = run(tmp_path, """
        import sys, gpuhub_labstart
        from importlib.metadata import version
        lean = gpuhub_labstart.import_hub_log_without_database()
        # The lab's Hub authentication (jupyterhub.singleuser itself needs jupyter_server,
        # which these tests do not install; the lab image's build checks it whole).
        print(lean and gpuhub_labstart.import_singleuser_without_sqlalchemy(
            "jupyterhub.services.auth"))
        from jupyterhub.log import log_request
        print("alembic" in sys.modules, [m for m in sys.modules if m.startswith("jupyterhub.handlers")],
              "sqlalchemy" in sys.modules)
        print(version("jupyterhub"))
    """)
    assert result.returncode == 0, result.stderr
    lean, loaded, hub = result.stdout.splitlines()
    assert (lean, loaded) == ("True", "False [] False"), (
        f"JupyterHub {hub}: jupyterhub.log needs more than gpuhub_labstart stands in for")
    from gpuhub.core.versions import pinned
    assert hub == pinned("jupyterhub"), (
        f"the tests run with JupyterHub {hub}, not the pinned one: pip install -r "
        "requirements-dev.txt")


def test_the_lab_resolves_the_hubs_name_afresh():
    """JupyterHub 6's client in the lab (aiohttp with aiodns) would keep the hub's old
    address for Docker's DNS TTL (600 s) after the hub moved; main() switches it to
    getaddrinfo. In a fresh interpreter: the switch is process-wide."""
    code = textwrap.dedent("""
        import asyncio, aiohttp.connector, aiohttp.resolver, gpuhub_labstart
        from jupyterhub.httpclient import JupyterHubHTTPClient
        async def resolver():
            connector = JupyterHubHTTPClient()._new_connector()
            await connector.close()
            return type(connector._resolver).__name__
        before = asyncio.run(resolver())
        gpuhub_labstart.fresh_name_lookups()
        print(before, asyncio.run(resolver()))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=LABSTART, timeout=60)
    assert done.stdout.split() == ["AsyncResolver", "ThreadedResolver"], done.stderr
