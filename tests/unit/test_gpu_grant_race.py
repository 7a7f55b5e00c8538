"""Concurrent spawns under the exclusive policy never hand one GPU to two labs.

Docker is a scripted double: every container list and every container creation waits at
a gate that the test opens, so a test chooses the exact order in which the awaits of
several spawns return. A list is sent (Docker takes its snapshot of the running labs)
and answered at two gates of its own, as a real list misses a container created while
its answer is on the way.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado import web
from traitlets.config import Config

from gpuhub.core.profiles import Profile
from gpuhub.hub.grants import PendingGrants
from gpuhub.hub.spawner import LABEL_GPUS, LABEL_PROJECT, LABEL_USER, GpuDockerSpawner
from support.spawners import fresh_hub_process, on_engine, user_spawner

SENT, ANSWERED, CREATED = "list sent", "list answered", "container created"


class LabFailed(RuntimeError):
    """A lab that dies while it starts (the spawner removes it and gives its GPUs back)."""


class ScriptedDocker:
    """The engine's running labs, with a gate at every await of a spawn.

    ``waiting`` maps (user, step) to the gate that spawn waits at; ``open`` lets it go on.
    """

    def __init__(self):
        self.labs: dict[str, dict[str, str]] = {}  # user -> labels of their running lab
        self.waiting: dict[tuple[str, str], asyncio.Future] = {}

    async def gate(self, user: str, step: str):
        assert (user, step) not in self.waiting, f"{user} waits twice at {step!r}"
        gate = asyncio.get_running_loop().create_future()
        self.waiting[(user, step)] = gate
        return await gate

    def open(self, user: str, step: str, value=None) -> None:
        self.waiting.pop((user, step)).set_result(value)

    def api_for(self, spawner: GpuDockerSpawner):
        """What replaces ``spawner.docker``: the labelled-container list, gated twice."""
        async def docker(method, *args, **kwargs):
            assert method == "containers", method
            assert kwargs["filters"] == {"label": f"{LABEL_PROJECT}=gpuhub"}, kwargs
            user = spawner.user.name
            await self.gate(user, SENT)
            snapshot = [{"Labels": dict(labels)} for labels in self.labs.values()]
            await self.gate(user, ANSWERED)
            return snapshot
        return docker

    def holders(self) -> dict[str, list[str]]:
        """GPU -> users whose running lab carries it in its labels."""
        held: dict[str, list[str]] = {}
        for labels in self.labs.values():
            for gpu in filter(None, labels[LABEL_GPUS].split(",")):
                held.setdefault(gpu, []).append(labels[LABEL_USER])
        return held

    async def settle(self, busy) -> None:
        """Run the loop until every unfinished spawn or stop in ``busy`` waits at a gate."""
        for _ in range(10_000):
            if sum(not t.done() for t in busy) == len(self.waiting):
                return
            await asyncio.sleep(0)
        raise AssertionError(f"spawns neither finish nor wait at a gate: {sorted(self.waiting)}")


@contextlib.contextmanager
def scripted_hub(gpus: list[str]):
    """A fresh hub process (no allocator, no grants in flight) whose labs start on ``docker``."""
    docker = ScriptedDocker()

    async def create_and_start(self):
        fails = await docker.gate(self.user.name, CREATED)
        docker.labs[self.user.name] = self.gpu_labels()
        if fails:
            raise LabFailed(f"{self.user.name}'s lab died while starting")
        return ("10.0.0.5", 8888)

    async def removed(self, now=False):
        docker.labs.pop(self.user.name, None)

    async def remove_quietly(self):
        docker.labs.pop(self.user.name, None)

    async def serving(self, ip, port):
        return None

    async def gone(self):
        return None

    config = Config()
    config.GpuDockerSpawner.gpu_inventory = list(gpus)
    config.GpuDockerSpawner.gpu_policy = "exclusive"
    config.GpuDockerSpawner.require_lab_firewall = False

    def spawner(name: str, asks: int) -> GpuDockerSpawner:
        lab = user_spawner(config, name)
        lab.docker = docker.api_for(lab)
        lab.resolve_profile = lambda: Profile(slug="gpu", display_name="GPU", gpus=asks)
        return lab

    with pytest.MonkeyPatch.context() as mp:
        fresh_hub_process(mp)
        on_engine(mp, create_and_start=create_and_start, stop=removed, get_object=gone,
                  serving=serving, remove_quietly=remove_quietly)
        yield docker, spawner


def test_an_ended_grant_is_kept_until_every_older_snapshot_is_used():
    grants = PendingGrants()
    alice = grants.add("alice", ["GPU-0"])
    with grants.snapshot():  # bob asks Docker before alice's lab exists
        grants.end(alice)  # alice's lab runs now
        assert grants.held() == {"alice": ["GPU-0"]}, "bob's answer may not show alice's lab"
        with grants.snapshot():  # asked for after alice's lab runs: Docker lists it
            pass
        assert grants.held() == {"alice": ["GPU-0"]}
    assert grants.held() == {}

    carol = grants.add("carol", ["GPU-1"])
    older, newer = grants.snapshot(), grants.snapshot()
    older.__enter__()
    grants.end(carol)
    newer.__enter__()
    older.__exit__(None, None, None)
    assert grants.held() == {}, "only a snapshot asked for after the end is open"
    newer.__exit__(None, None, None)

    dave = grants.add("dave", ["GPU-2"])
    grants.end(dave)
    assert grants.held() == {}, "no snapshot open: an ended grant goes at once"


def test_a_lab_created_while_another_spawn_lists_the_labs_keeps_its_gpu():
    """alice holds a grant; bob's list misses alice's container, which is created after
    Docker took its snapshot; alice's spawn ends, which must not drop her grant while
    bob's list, asked for before, is unanswered; only then is bob's list answered. bob
    must not be given alice's GPU."""
    async def main():
        with scripted_hub(["GPU-0"]) as (docker, spawner):
            alice, bob = spawner("alice", 1), spawner("bob", 1)
            alice_starts = asyncio.ensure_future(alice.start())
            await docker.settle([alice_starts])
            docker.open("alice", SENT)
            await docker.settle([alice_starts])
            docker.open("alice", ANSWERED)
            await docker.settle([alice_starts])
            assert ("alice", CREATED) in docker.waiting and alice.gpu_ids == ["GPU-0"]

            bob_starts = asyncio.ensure_future(bob.start())
            busy = [alice_starts, bob_starts]
            await docker.settle(busy)
            docker.open("bob", SENT)  # Docker's snapshot: no lab runs yet
            await docker.settle(busy)

            docker.open("alice", CREATED)  # alice's lab is created and serves
            await docker.settle(busy)
            assert await alice_starts == ("10.0.0.5", 8888)

            docker.open("bob", ANSWERED)  # bob's out-of-date snapshot arrives
            await docker.settle(busy)
            bob_granted = list(bob.gpu_ids)
            if ("bob", CREATED) in docker.waiting:  # the bug: bob goes on to create his lab
                docker.open("bob", CREATED)
                await docker.settle(busy)
            (bob_result,) = await asyncio.gather(bob_starts, return_exceptions=True)
            return alice.gpu_ids, bob_granted, bob_result, docker.holders()

    alice_gpus, bob_granted, bob_result, holders = asyncio.run(asyncio.wait_for(main(), 30))
    assert alice_gpus == ["GPU-0"]
    assert bob_granted == [], (
        f"bob was given {bob_granted} while alice holds {alice_gpus}; labs per GPU: {holders}")
    assert isinstance(bob_result, web.HTTPError) and bob_result.status_code == 409, bob_result
    assert "all 1 GPUs you may use are in use" in bob_result.log_message
    assert holders == {"GPU-0": ["alice"]}


# --- property: any interleaving of spawns and stops ----------------------------------------

USERS = ["alice", "bob", "carol"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_gpus=st.integers(1, 3), asks=st.lists(st.integers(1, 2), min_size=3, max_size=3),
       data=st.data())
def test_no_interleaving_of_spawns_hands_one_gpu_to_two_labs(n_gpus, asks, data):
    gpus = [f"GPU-{i}" for i in range(n_gpus)]

    async def main():
        with scripted_hub(gpus) as (docker, spawner):
            labs = {u: spawner(u, n) for u, n in zip(USERS, asks, strict=True)}
            state = dict.fromkeys(USERS, "stopped")  # starting, running, stopping
            busy: dict[str, asyncio.Future] = {}

            def check(when: str) -> None:
                claims = [(g, u) for u, lab in labs.items()
                          if state[u] in ("starting", "running") for g in lab.gpu_ids]
                given_twice = {g for g, _ in claims if sum(g == h for h, _ in claims) > 1}
                assert not given_twice, f"{when}: {claims} (running: {docker.holders()})"
                assert all(len(us) == 1 for us in docker.holders().values()), docker.holders()

            async def step() -> None:
                await docker.settle(list(busy.values()))
                for user, task in list(busy.items()):
                    if not task.done():
                        continue
                    del busy[user]
                    error = task.exception()
                    if state[user] == "starting" and error is None:
                        state[user] = "running"
                    elif state[user] == "starting" and not (
                            isinstance(error, LabFailed)
                            or isinstance(error, web.HTTPError) and error.status_code == 409):
                        raise error
                    else:
                        state[user] = "stopped"
                check(f"after {label}")

            label = "the start"
            for _ in range(data.draw(st.integers(5, 40), label="steps")):
                choices = ([("open", key) for key in sorted(docker.waiting)]
                           + [("start", u) for u in USERS if state[u] == "stopped"]
                           + [("stop", u) for u in USERS if state[u] == "running"])
                what, arg = data.draw(st.sampled_from(choices))
                label = f"{what} {arg}"
                if what == "open":
                    fails = arg[1] == CREATED and data.draw(st.booleans(), label="lab fails")
                    docker.open(*arg, fails)
                elif what == "start":
                    state[arg] = "starting"
                    busy[arg] = asyncio.ensure_future(labs[arg].start())
                else:
                    state[arg] = "stopping"
                    busy[arg] = asyncio.ensure_future(labs[arg].stop())
                await step()
            while busy:  # let every spawn in flight finish
                label = "draining"
                docker.open(*sorted(docker.waiting)[0])
                await step()

    asyncio.run(asyncio.wait_for(main(), 30))
