"""gpuhub's test sessions: `nox -s lint docs tests e2e` is the full suite (the README's test command)."""

import os

import nox

nox.needs_version = ">=2024.3.2"
nox.options.sessions = ["lint", "docs", "tests", "e2e"]  # bench and unit run on request
nox.options.reuse_venv = "yes"
# Every version gpuhub pins (python -m tools.constraints refresh moves them all).
CONSTRAINTS = "gpuhub/core/constraints.txt"


def _install(session: nox.Session) -> None:
    session.install("-r", "requirements-dev.txt")


@nox.session
def lint(session: nox.Session) -> None:
    """Static checks: ruff; the runtimes' import borders (import-linter's contracts in
    pyproject.toml, and each runtime's allow-list and no cycles: tools/importborders.py);
    mypy over the package (pyproject.toml says what it holds)."""
    session.install("-c", CONSTRAINTS, "ruff", "import-linter", "grimp", "mypy")
    session.run("ruff", "check", "gpuhub", "tasks.py", "noxfile.py", "tests", "harness", "bench", "tools",
                "jupyterhub/jupyterhub_config.py", "docs/conf.py", "docs/_ext", *session.posargs)
    session.run("lint-imports", "--no-cache")
    session.run("python", "-m", "tools.importborders")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site (docs/, Sphinx + MyST): warnings are errors, and every internal
    link and anchor must resolve; the reference pages are generated from the code."""
    session.install("-c", CONSTRAINTS, "-r", "docs/requirements.txt")
    session.run("sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs",
                "docs/_build/html", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests (no Docker), then integration tests against a real stack.

    The disruptive test (it restarts the Docker daemon) runs last, alone, and only where
    GPUHUB_RESTART_DOCKER_CMD says how to restart it.
    """
    _install(session)
    # The slowest tests' times in CI's log: the full run must stay under 40 minutes.
    session.run("pytest", "tests/unit", "tests/integration", "-m", "not disruptive and not swarm",
                "--durations=25", *session.posargs)
    if os.environ.get("GPUHUB_RESTART_DOCKER_CMD"):
        session.run("pytest", "tests/integration", "-m", "disruptive", *session.posargs)


@nox.session
def unit(session: nox.Session) -> None:
    """Only the unit tests: seconds, no Docker."""
    _install(session)
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session
def e2e(session: nox.Session) -> None:
    """Browser end-to-end suite: log in, spawn a lab, run a notebook cell, check GPUs."""
    _install(session)
    session.run("pytest", "tests/e2e", "--durations=10", *session.posargs)


@nox.session(default=False)
def swarm(session: nox.Session) -> None:
    """Swarm mode on three real Docker engines in network namespaces (root; minutes)."""
    _install(session)
    session.run("pytest", "tests/integration", "-m", "swarm", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Spawn latency vs the bare-container floor and a stock DockerSpawner hub (`-- --smoke`)."""
    _install(session)
    session.install("-c", CONSTRAINTS, "matplotlib")
    session.run("python", "-m", "bench.broker_overhead")
    session.run("python", "-m", "bench.run", *session.posargs)


@nox.session(default=False)
def audit(session: nox.Session) -> None:
    """Known vulnerabilities in the built hub and lab images' packages (online, Docker).

    No advisory source reached, or one that does not answer: no verdict, and a failure.
    """
    session.install("-c", CONSTRAINTS, "-r", "requirements.txt", "pip-audit")
    session.run("python", "-m", "tools.audit", *session.posargs)
