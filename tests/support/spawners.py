"""GpuDockerSpawner as a fresh hub process would make it, for the spawner's unit tests."""

from __future__ import annotations

from types import SimpleNamespace

from jupyterhub.objects import Hub

from gpuhub.spawner import GpuDockerSpawner

# What the class declares before any test runs: its process-wide state (ClassVar), whose
# values a test must not hand to the next.
_DECLARED = {name: vars(GpuDockerSpawner)[name]
             for name, annotation in GpuDockerSpawner.__annotations__.items()
             if str(annotation).startswith("ClassVar")}


def fresh_hub_process(mp) -> None:
    """Give GpuDockerSpawner, through the pytest MonkeyPatch ``mp``, the class-level state of
    a hub process that has just started: every ClassVar anew (allocator, grants in flight,
    start queue, journals, the line), a new ClassVar included without listing it here."""
    for name, declared in _DECLARED.items():
        mp.setattr(GpuDockerSpawner, name, None if declared is None else type(declared)())


def user_spawner(config, name: str = "alice", cls=GpuDockerSpawner, **user):
    """The ``cls`` spawner the hub would build for ``name`` from ``config`` (this is when
    traits are validated), for a user object with only what spawners read (plus ``user``)."""
    fields = {"id": hash(name), "url": f"/user/{name}/", "server": None} | user
    return cls(user=SimpleNamespace(name=name, **fields), hub=Hub(), config=config)
