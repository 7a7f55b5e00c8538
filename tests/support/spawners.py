"""GpuDockerSpawner as a fresh hub process would make it, for the spawner's unit tests."""

from __future__ import annotations

from types import SimpleNamespace

from dockerspawner import DockerSpawner
from jupyterhub.objects import Hub

from gpuhub.hub.spawner import GpuDockerSpawner

# What the class declares before any test runs: its process-wide state (ClassVar), whose
# values a test must not hand to the next.
_DECLARED = {name: vars(GpuDockerSpawner)[name]
             for name, annotation in GpuDockerSpawner.__annotations__.items()
             if str(annotation).startswith("ClassVar")}


def fresh_hub_process(mp) -> None:
    """Give GpuDockerSpawner, through the pytest MonkeyPatch ``mp``, the class-level state of
    a hub process that has just started: every ClassVar anew (allocator, grants in flight,
    start queue, journals, the line), a new ClassVar included without listing it here.
    (The hub's telemetry: tests/unit/conftest.py's hub_telemetry.)"""
    for name, declared in _DECLARED.items():
        mp.setattr(GpuDockerSpawner, name, None if declared is None else type(declared)())


def on_engine(mp, *, create_and_start, stop, get_object, serving, remove_quietly,
              **more) -> None:
    """Through the pytest MonkeyPatch ``mp``, give every lab these stand-ins where the
    spawner meets Docker: DockerSpawner's start (create and start the container), stop and
    get_object, and GpuDockerSpawner's wait_until_serving, _remove_quietly and any ``more``."""
    mp.setattr(DockerSpawner, "start", create_and_start)
    mp.setattr(DockerSpawner, "stop", stop)
    mp.setattr(DockerSpawner, "get_object", get_object)
    mp.setattr(GpuDockerSpawner, "wait_until_serving", serving)
    mp.setattr(GpuDockerSpawner, "_remove_quietly", remove_quietly)
    for name, value in more.items():
        mp.setattr(GpuDockerSpawner, name, value)


def user_spawner(config, name: str = "alice", cls=GpuDockerSpawner, **user):
    """The ``cls`` spawner the hub would build for ``name`` from ``config`` (this is when
    traits are validated), for a user object with only what spawners read (plus ``user``)."""
    fields = {"id": hash(name), "url": f"/user/{name}/", "server": None} | user
    return cls(user=SimpleNamespace(name=name, **fields), hub=Hub(), config=config)
