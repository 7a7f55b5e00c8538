"""Fixtures shared by the unit tests of the tasks."""

import pytest

from harness import stack


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
