"""Session-wide fixtures shared by the integration and e2e tiers."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time

import pytest

from harness.stack import Stack, build_images_once


def pytest_addoption(parser):
    parser.addoption(
        "--gpu", choices=("auto", "required", "off"), default="auto",
        help="e2e GPU mode: auto (check real GPUs if the host has them, else skip that "
             "check), required (a host without a real NVIDIA GPU fails; for GPU runners), "
             "off (labs get no GPU; GPU checks skip)")


def _docker_ready() -> str | None:
    if not shutil.which("docker"):
        return "the docker CLI is not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine answers"
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        return "Docker Compose v2 is missing"
    return None


@pytest.fixture(scope="session")
def docker_required():
    """Integration and e2e tests need Docker: fail loudly, never skip silently."""
    problem = _docker_ready()
    if problem:
        pytest.fail(f"{problem}: these tests need a Docker engine (run .ci/provision)")


@pytest.fixture(scope="session")
def images(docker_required, tmp_path_factory, measure):
    """Build the hub and lab images once per test session, through `invoke build`."""
    measure("invoke build (this session)", build_images_once(tmp_path_factory.mktemp("images")))


@contextlib.contextmanager
def _stacks(tmp_path_factory):
    """A maker of stacks (own project, port, volumes), all removed when the block ends."""
    made: list[Stack] = []

    def make(**overrides: str) -> Stack:
        stack = Stack.create(tmp_path_factory.mktemp("stack"), **overrides)
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in made:
            stack.teardown()


@pytest.fixture(scope="module")
def stack_factory(images, tmp_path_factory):
    """Make extra stacks for one test module; they are removed when the module ends, so
    that no module's stack (its hub, sampler and labs) loads the machine for the next."""
    with _stacks(tmp_path_factory) as make:
        yield make


@pytest.fixture
def test_stacks(images, tmp_path_factory):
    """Make stacks for one test; they are removed when the test ends."""
    with _stacks(tmp_path_factory) as make:
        yield make


@pytest.fixture(scope="session")
def _session_stacks(images, tmp_path_factory):
    with _stacks(tmp_path_factory) as make:
        yield make


@pytest.fixture(scope="session")
def stack(_session_stacks, measure) -> Stack:
    """The shared test stack, brought up with the real `invoke up`.

    Without the line for GPUs (GPU_LINE_TIMEOUT=0): the allocation tests check the
    immediate refusal; tests/integration/test_waiting_line.py has a stack with the line.
    """
    s = _session_stacks(GPU_LINE_TIMEOUT="0")
    started = time.monotonic()
    s.up("--no-build")
    measure("invoke up --no-build (images built)", time.monotonic() - started)
    return s


_MEASURED: dict[str, float] = {}


@pytest.fixture(scope="session")
def measure():
    """Record a timing (seconds) to print in the summary and save in artifacts/."""
    def record(name: str, seconds: float) -> None:
        _MEASURED[name] = round(seconds, 2)
    return record


def pytest_terminal_summary(terminalreporter):
    if not _MEASURED:
        return
    import json
    from pathlib import Path

    terminalreporter.section("gpuhub measurements (seconds)")
    for name, value in _MEASURED.items():
        terminalreporter.write_line(f"{name}: {value}")
    out = Path(__file__).resolve().parents[1] / "artifacts"
    out.mkdir(exist_ok=True)
    (out / "measurements.json").write_text(json.dumps(_MEASURED, indent=2))
