"""Fixtures shared by the unit tests."""

import pytest
from prometheus_client import CollectorRegistry

from gpuhub.core.gpus import Gpu
from gpuhub.hub import telemetry
from gpuhub.tasks import composestack
from harness import stack
from support.spawners import fresh_hub_process


@pytest.fixture(autouse=True)
def hub_process(monkeypatch):
    """Each test as in a hub process of its own: the spawners' process-wide state anew
    (the GPU state among it), and the hub's telemetry as jupyterhub_config.py installs it,
    in a registry of the test's own (the spawners count their starts in it)."""
    fresh_hub_process(monkeypatch)
    monkeypatch.setattr(telemetry, "_installed", None)
    return telemetry.install(lambda: (telemetry.Board, 3600.0), registry=CollectorRegistry())


@pytest.fixture
def env_file(tmp_path, monkeypatch):
    """Point the tasks at a settings file of their own; call it to write settings."""
    path = tmp_path / "test.env"

    def write(**settings):
        path.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        return path

    monkeypatch.setenv("GPUHUB_ENV_FILE", str(path))
    write()
    return write


@pytest.fixture
def free_port():
    return stack.free_port()


@pytest.fixture
def no_gpu_detection(monkeypatch):
    """up() without nvidia-smi: one GPU 'detected'; records whether detection ran."""
    calls = []

    def detect(project):
        calls.append(project)
        return [Gpu("0", "GPU-aaa")]

    monkeypatch.setattr(composestack, "detect_gpus", detect)
    return calls
