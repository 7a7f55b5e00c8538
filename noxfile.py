"""gpuhub's test sessions: `nox` (lint, docs, tests: unit, integration and e2e) is the full
suite, the README's test command."""

import os

import nox
from nox.command import CommandFailed

nox.needs_version = ">=2024.3.2"
nox.options.sessions = ["lint", "docs", "tests"]  # unit, e2e, swarm and bench run on request
nox.options.reuse_venv = "yes"
# Every version gpuhub pins (python -m tools.constraints refresh moves them all).
CONSTRAINTS = "gpuhub/core/constraints.txt"
E2E = ["tests/e2e", "--durations=10"]  # the e2e suite, in `tests` and alone


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
    """Unit tests (no Docker), integration tests against a real stack, then the e2e suite.

    The disruptive test (it restarts the Docker daemon) runs after the integration tests,
    alone, and only where GPUHUB_RESTART_DOCKER_CMD says how to restart it. The e2e suite
    runs here in the same environment (`nox -s e2e` alone has its own): the same
    requirements, about 45 s less. Each tier runs also when one before it failed.
    """
    _install(session)
    # The slowest tests' times in CI's log: the full run must stay under 45 minutes.
    tiers = [["tests/unit", "tests/integration", "-m", "not disruptive and not swarm",
              "--durations=25"]]
    if os.environ.get("GPUHUB_RESTART_DOCKER_CMD"):
        tiers.append(["tests/integration", "-m", "disruptive"])
    tiers.append(E2E)
    # With arguments (`nox -- -k NAME`) a tier may select no test (pytest's exit 5).
    success = [0, 5] if session.posargs else [0]
    failed = []
    for tier in tiers:
        try:
            session.run("pytest", *tier, *session.posargs, success_codes=success)
        except CommandFailed:
            failed.append(" ".join(tier))
    if failed:
        session.error("failed: " + "; ".join(f"pytest {tier}" for tier in failed))


@nox.session
def unit(session: nox.Session) -> None:
    """Only the unit tests: seconds, no Docker."""
    _install(session)
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session(default=False)
def e2e(session: nox.Session) -> None:
    """Browser end-to-end suite: log in, spawn a lab, run a notebook cell, check GPUs
    (`nox -s tests` runs it too, after the integration tests)."""
    _install(session)
    session.run("pytest", *E2E, *session.posargs)


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
