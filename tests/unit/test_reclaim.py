"""Reclaiming idle GPUs and profiles' time limits: who is stopped, when, and what they read."""

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from traitlets.config import Config

from gpuhub.core.gpureport import Lab
from gpuhub.core.profiles import ProfileError, Profiles, parse_duration
from gpuhub.core.stopreasons import leave_reason, take_reason
from gpuhub.hub.spawner import GpuDockerSpawner
from gpuhub.services.reclaim import Reclaim, decide, orphans
from support.spawners import user_spawner

NOW = 1_000_000.0
HOUR = 3600


def iso(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def lab(user="alice", gpus=("GPU-a",), profile="gpu1", started=NOW - 10 * HOUR):
    return Lab(id=user * 8, user=user, profile=profile, gpus=tuple(gpus), since=iso(started))


def reading(**gpus):
    """gpus: uuid suffix -> (utilisation, idle_since)."""
    return {"gpus": [{"uuid": f"GPU-{k}", "index": str(i), "utilisation": u, "idle_since": s}
                     for i, (k, (u, s)) in enumerate(gpus.items())]}


def run(labs, samples, waiting=False, max_ages=None, timeout=HOUR, waiting_timeout=900):
    return decide(labs, samples, idle_below=5, idle_timeout=timeout,
                  idle_timeout_waiting=waiting_timeout, waiting=waiting,
                  max_ages=max_ages or {}, now=NOW)


def test_a_lab_whose_gpu_idled_past_the_timeout_is_stopped_with_the_reason():
    [todo] = run([lab()], reading(a=(0, NOW - HOUR - 5)))
    assert todo == Reclaim("alice", "its GPUs were idle (under 5 % busy) for 1 h 00 min; "
                                    "your files are kept")


def test_a_busy_or_recently_idle_gpu_is_left_alone():
    assert run([lab()], reading(a=(85, None))) == []
    assert run([lab()], reading(a=(0, NOW - HOUR + 60))) == []


def test_idle_time_counts_from_the_labs_start_when_the_gpu_idled_before_it():
    fresh = lab(started=NOW - 600)  # the GPU has idled for days, the lab for 10 minutes
    assert run([fresh], reading(a=(0, NOW - 50 * HOUR))) == []


def test_missing_or_unknown_readings_never_stop_a_lab():
    assert run([lab()], None) == []
    assert run([lab()], reading(b=(0, NOW - 9 * HOUR))) == []  # its GPU not in the reading
    assert run([lab()], reading(a=(None, None))) == []  # the driver reports no utilisation


def test_all_of_a_labs_gpus_must_be_idle():
    two = lab(gpus=("GPU-a", "GPU-b"))
    assert run([two], reading(a=(0, NOW - 2 * HOUR), b=(40, None))) == []
    assert len(run([two], reading(a=(0, NOW - 2 * HOUR), b=(1, NOW - 3 * HOUR)))) == 1


def test_a_shorter_timeout_while_someone_waits():
    samples = reading(a=(0, NOW - 1000))
    assert run([lab()], samples) == []
    [todo] = run([lab()], samples, waiting=True)
    assert "for 16 min while others waited for one" in todo.reason
    assert run([lab()], samples, timeout=0) == []  # GPU_IDLE_TIMEOUT=0: never...
    assert run([lab()], samples, timeout=0, waiting=True) == []  # ...in line or not
    assert run([lab()], samples, waiting=True, waiting_timeout=0) == []  # 0: as GPU_IDLE_TIMEOUT


def test_cpu_labs_are_left_to_the_idle_culler():
    assert run([lab(gpus=())], reading(a=(0, NOW - 9 * HOUR))) == []


def test_max_age_stops_any_lab_of_that_profile():
    old = lab(profile="gpu1", started=NOW - 13 * HOUR)
    [todo] = run([old, lab("bob", profile="cpu", gpus=(), started=NOW - 30 * HOUR)],
                 reading(a=(90, None)), max_ages={"gpu1": 12 * HOUR})
    assert todo == Reclaim("alice", "it reached the 12 h 00 min time limit of its profile "
                                    "(gpu1); your files are kept")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 100), st.one_of(st.none(), st.integers(0, 40 * HOUR))),
                min_size=1, max_size=4),
       st.integers(0, 40 * HOUR), st.booleans())
def test_property_only_labs_whose_every_gpu_is_measured_idle_long_enough(gpus, age, waiting):
    names = "abcd"[:len(gpus)]
    samples = reading(**{k: (u, NOW - s if s is not None else None) for k, (u, s) in zip(names, gpus)})
    the_lab = lab(gpus=[f"GPU-{k}" for k in names], started=NOW - age)
    stopped = bool(run([the_lab], samples, waiting=waiting))
    timeout = 900 if waiting else HOUR
    idle_long_enough = all(u < 5 and s is not None and min(s, age) >= timeout for u, s in gpus)
    assert stopped == idle_long_enough


def test_max_age_in_profiles_is_validated():
    assert parse_duration("12h") == 12 * HOUR and parse_duration("90m") == 5400
    assert parse_duration("2d") == 2 * 86400 and parse_duration(45) == 45
    text = "- display_name: A\n  max_age: {}\n- display_name: B\n"
    assert Profiles.from_yaml(text.format("8h")).profiles[0].max_age == 8 * HOUR
    for bad in ("soon", "0h", "-1", "true", "1.5h"):
        with pytest.raises(ProfileError, match="max_age must be a duration such as 12h"):
            Profiles.from_yaml(text.format(bad))


def test_the_shipped_gpu_profiles_have_a_time_limit():
    from harness.stack import ROOT

    shipped = Profiles.from_file(ROOT / "jupyterhub" / "profiles.yaml")
    assert {p.slug: p.max_age for p in shipped.profiles} == {
        "cpu": None, "gpu1": 12 * HOUR, "gpu2": 12 * HOUR}


def test_the_reason_reaches_the_next_stop_once(tmp_path):
    leave_reason("alice", "its GPUs were idle", tmp_path)
    assert take_reason("alice", tmp_path) == "its GPUs were idle"
    assert take_reason("alice", tmp_path) == ""


def test_stop_tells_the_user_and_the_records_why(tmp_path, monkeypatch):
    from dockerspawner import DockerSpawner

    recorded = []

    async def stopped(self, now=False):
        self.object_id = ""

    async def record(self, event, *args):
        recorded.append((event, args[0], args[2]))

    async def gone(self):
        return None

    monkeypatch.setattr(DockerSpawner, "stop", stopped)
    monkeypatch.setattr(GpuDockerSpawner, "record", record)
    monkeypatch.setattr(GpuDockerSpawner, "get_object", gone)
    config = Config()
    config.GpuDockerSpawner.stop_reasons_dir = str(tmp_path)
    spawner = user_spawner(config)
    spawner.object_id = "c0ffee"
    leave_reason("alice", "its GPUs were idle (under 5 % busy) for 1 h 00 min", tmp_path)
    asyncio.run(spawner.stop())
    assert spawner.last_stop_reason == ("was stopped: its GPUs were idle (under 5 % busy) "
                                        "for 1 h 00 min")
    assert recorded == [("stopped", "c0ffee", "its GPUs were idle (under 5 % busy) for 1 h 00 min")]
    spawner.object_id = "c0ffee2"
    asyncio.run(spawner.stop())  # a stop the user asked for
    assert spawner.last_stop_reason == ""
    assert recorded[-1] == ("stopped", "c0ffee2", "stopped by the hub")


def test_a_lab_whose_user_the_hub_no_longer_has_is_an_orphan_once_old_enough():
    now = 10_000.0
    containers = [
        {"Id": "a" * 64, "Created": now - 3600, "Labels": {"gpuhub.user": "gone"}},
        {"Id": "b" * 64, "Created": now - 3600, "Labels": {"gpuhub.user": "alice"}},
        {"Id": "c" * 64, "Created": now - 5, "Labels": {"gpuhub.user": "new"}},  # too young
        {"Id": "d" * 64, "Created": now - 3600, "Labels": {}},  # not a lab of a user
    ]
    asked = []

    def user_exists(user):
        asked.append(user)
        return user == "alice"

    assert orphans(containers, user_exists, now) == [("a" * 64, "gone")]
    assert asked == ["gone", "alice"]


def test_no_lab_is_removed_when_the_hub_cannot_say_who_exists():
    def hub_away(user):
        raise RuntimeError("the hub answered 503")

    with pytest.raises(RuntimeError):  # the round fails; nothing is removed on a guess
        orphans([{"Id": "a" * 64, "Created": 0, "Labels": {"gpuhub.user": "x"}}], hub_away,
                 10_000.0)


# --- whose labs: containers (compose mode) or Swarm services (swarm mode) --------------------

class _Api:
    def __init__(self, services=(), containers=()):
        self._services, self._containers, self.removed = list(services), list(containers), []

    def services(self, filters):
        self.asked = filters
        return self._services

    def containers(self, all=False, filters=None):
        self.asked = filters
        return self._containers

    def remove_service(self, ident):
        self.removed.append(("service", ident))

    def remove_container(self, ident, force=False):
        self.removed.append(("container", ident, force))


def test_in_swarm_mode_the_sweep_removes_lab_services_of_users_the_hub_does_not_have():
    from types import SimpleNamespace

    from gpuhub.core.settings import validate
    from gpuhub.services.reclaim import ContainerLabs, ServiceLabs, labs_of

    api = _Api(services=[
        {"ID": "svc-ghost", "CreatedAt": "2026-12-05T19:20:48.263757858Z",
         "Spec": {"Labels": {"gpuhub.project": "gpuhub", "gpuhub.user": "ghost"}}},
        {"ID": "svc-alice", "CreatedAt": "2026-12-05T19:20:48Z",
         "Spec": {"Labels": {"gpuhub.project": "gpuhub", "gpuhub.user": "alice"}}},
        {"ID": "svc-odd", "CreatedAt": "yesterday",  # an age it cannot read: kept
         "Spec": {"Labels": {"gpuhub.project": "gpuhub", "gpuhub.user": "ghost"}}},
    ])
    swarm = validate({"MODE": "swarm", "REGISTRY": "r.example.org:5000",
                      "SWARM_HOMES": "/srv/nfs/homes"})
    labs = labs_of(swarm, SimpleNamespace(api=api))
    assert isinstance(labs, ServiceLabs) and not labs.reclaims_idle_gpus
    assert isinstance(labs_of(validate({}), SimpleNamespace(api=api)), ContainerLabs)
    every = labs.every()
    assert api.asked == {"label": "gpuhub.project=gpuhub"}
    assert [(lab["Id"], lab["Created"]) for lab in every] == [
        ("svc-ghost", 1796498448.0), ("svc-alice", 1796498448.0)]
    gone = orphans(every, lambda user: user == "alice", now=1796498448.0 + 60)
    assert gone == [("svc-ghost", "ghost")]
    labs.remove("svc-ghost")
    assert api.removed == [("service", "svc-ghost")]
    assert labs.kind == "lab service" and labs.running() == []
