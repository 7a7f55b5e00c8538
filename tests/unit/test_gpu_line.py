"""Waiting in line for a GPU: first come, first served, never double-booked.

The line itself (gpuhub.hub.gpuline) is pure; the spawner tests run real GpuDockerSpawners
against a Docker double that lists the labs it started, with no gates: the line's pump
and the spawns interleave as the event loop runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from tornado import web
from traitlets.config import Config

from gpuhub.core.profiles import Profile
from gpuhub.hub.gpuline import GpuLine, LineFull, ordinal, roll_over, waiting_message
from gpuhub.hub.spawner import LABEL_GPUS, GpuDockerSpawner, StartRefused
from support.spawners import fresh_hub_process, on_engine, user_spawner

GPUS = ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]


# --- the line ---------------------------------------------------------------------------

def run(coro):
    return asyncio.run(coro)


def test_one_place_per_user_and_a_full_line_refuses():
    async def main():
        line = GpuLine(max_waiting=2)
        line.join("alice", 1, lambda held: None)
        with pytest.raises(ValueError):
            line.join("alice", 1, lambda held: None)
        line.join("bob", 1, lambda held: None)
        with pytest.raises(LineFull):
            line.join("carol", 1, lambda held: None)
        assert [w.user for w in line.waiters] == ["alice", "bob"]
    run(main())


def test_offer_serves_in_order_and_skips_who_cannot_use_what_is_free():
    async def main():
        free = ["GPU-3"]

        def taker(n):
            def grant(held):
                if len(free) < n:
                    return None
                got, free[:] = free[:n], free[n:]
                return got
            return grant

        line = GpuLine(max_waiting=10)
        big = line.join("big", 2, taker(2))       # needs two: only one is free
        small = line.join("small", 1, taker(1))
        late = line.join("late", 1, taker(1))
        served = line.offer({})
        assert served == [small] and small.granted.result() == ["GPU-3"]
        assert line.position(big) == 1 and line.position(late) == 2
        free.extend(["GPU-0", "GPU-1"])
        assert line.offer({}) == [big]  # the first in line who may use them
        assert [w.user for w in line.waiters] == ["late"]
    run(main())


def test_a_cancelled_waiter_is_skipped():
    async def main():
        line = GpuLine(max_waiting=10)
        gone = line.join("gone", 1, lambda held: ["GPU-0"])
        gone.granted.cancel()
        nxt = line.join("next", 1, lambda held: ["GPU-0"])
        assert line.offer({}) == [nxt] and not line.waiters
    run(main())


def test_the_message_says_the_place_and_an_estimate_once_there_is_history():
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"]
    assert waiting_message(2, None) == "Waiting for a GPU: 2nd in line"
    assert waiting_message(1, 250.0) == ("Waiting for a GPU: 1st in line "
                                         "(lately a wait took about 4 min)")

    async def main():
        clock = [0.0]
        line = GpuLine(max_waiting=10, clock=lambda: clock[0])
        for i, wait in enumerate((60.0, 120.0, 600.0)):
            line.join(f"u{i}", 1, lambda held: ["GPU-0"])
            clock[0] += wait
            line.offer({})
        assert line.typical_wait() == 120.0
    run(main())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("join"), st.integers(0, 7), st.integers(1, 3)),
    st.tuples(st.just("free"), st.integers(0, 3)),
), max_size=40))
def test_property_never_two_holders_and_the_line_keeps_its_order(steps):
    """Random joins and freed GPUs: no GPU ever has two holders, and among waiters who
    ask for the same number of GPUs, the earlier is always served first."""
    async def main():
        holder: dict[str, str] = {}  # GPU -> user

        def grant_for(user, n):
            def grant(held):
                free = [g for g in GPUS if g not in holder]
                if len(free) < n:
                    return None
                for g in free[:n]:
                    assert g not in holder
                    holder[g] = user
                return free[:n]
            return grant

        line = GpuLine(max_waiting=100)
        order: list[tuple[str, int]] = []
        served: list[tuple[str, int]] = []
        for step in steps:
            if step[0] == "join":
                user = f"u{step[1]}"
                if user in holder.values() or any(w.user == user for w in line.waiters):
                    continue
                line.join(user, step[2], grant_for(user, step[2]))
                order.append((user, step[2]))
            else:
                holder.pop(GPUS[step[1]], None)
            served += [(w.user, w.gpus) for w in line.offer({})]
            assert len(set(holder)) == len(holder)
        for n in (1, 2, 3):
            asked = [u for u, k in order if k == n]
            got = [u for u, k in served if k == n]
            assert got == asked[:len(got)], (asked, got)
    run(main())


# --- the spawner: wait in line, on a Docker double -----------------------------------------

class Engine:
    """Running labs as Docker lists them: user -> labels."""

    def __init__(self):
        self.labs: dict[str, dict[str, str]] = {}
        self.started: list[str] = []  # users, in the order their labs were created

    def end(self, user: str) -> str:
        """A lab stops (the GPU it held is free now); returns its GPU."""
        gpu = self.labs.pop(user)[LABEL_GPUS]
        GpuDockerSpawner.kick_line()
        return gpu


@contextlib.contextmanager
def hub(tmp_path, queue_timeout=60, queue_max=20, pins=None):
    engine = Engine()

    async def create_and_start(self):
        engine.labs[self.user.name] = self.gpu_labels()
        engine.started.append(self.user.name)
        return ("10.0.0.5", 8888)

    async def listed(self, method, *args, **kwargs):
        await asyncio.sleep(0)  # a real await, as the Docker API call is
        return [{"Labels": dict(labels)} for labels in engine.labs.values()]

    async def nothing(self, *args, **kwargs):
        return None

    config = Config()
    config.GpuDockerSpawner.gpu_inventory = list(GPUS)
    config.GpuDockerSpawner.gpu_policy = "exclusive"
    config.GpuDockerSpawner.gpu_line_timeout = queue_timeout
    config.GpuDockerSpawner.gpu_line_max = queue_max
    config.GpuDockerSpawner.line_file = str(tmp_path / "gpu-line.json")
    config.GpuDockerSpawner.gpu_pins = pins or {}

    def spawner(name: str, asks: int = 1) -> GpuDockerSpawner:
        lab = user_spawner(config, name)
        lab.resolve_profile = lambda: Profile(slug="gpu1", display_name="1 GPU", gpus=asks)
        lab._spawn_pending = True
        return lab

    with pytest.MonkeyPatch.context() as mp:
        fresh_hub_process(mp)
        on_engine(mp, create_and_start=create_and_start, stop=nothing, get_object=nothing,
                  serving=nothing, remove_quietly=nothing, docker=listed, record=nothing)
        yield engine, spawner


async def hold_every_gpu(spawner) -> None:
    """Users u0, u1, ... start a 1-GPU lab each until no GPU is free."""
    for i in range(len(GPUS)):
        await spawner(f"u{i}").start()


async def until(predicate, what: str, steps: int = 20_000):
    for _ in range(steps):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


def test_six_users_four_gpus_two_wait_in_order_and_a_freed_gpu_goes_to_the_first(tmp_path):
    async def main():
        with hub(tmp_path) as (engine, spawner):
            labs = [spawner(f"u{i}") for i in range(6)]
            starts = []
            for lab in labs:  # pressed Start one after the other, all at once
                starts.append(asyncio.ensure_future(lab.start()))
                await asyncio.sleep(0)
            await until(lambda: len(engine.labs) == 4 and len(GpuDockerSpawner._gpu_state.line) == 2,
                        "4 running and 2 in line")
            line = GpuDockerSpawner._gpu_state.line
            assert [w.user for w in line.waiters] == ["u4", "u5"]
            kept = json.loads((tmp_path / "gpu-line.json").read_text())
            assert [(w["user"], w["gpus"]) for w in kept] == [("u4", 1), ("u5", 1)]
            holders = {labels[LABEL_GPUS] for labels in engine.labs.values()}
            assert holders == set(GPUS)
            freed = engine.end("u1")
            await until(lambda: "u4" in engine.labs, "u4 gets the freed GPU")
            assert engine.labs["u4"][LABEL_GPUS] == freed
            assert [w.user for w in line.waiters] == ["u5"]
            assert "u5" not in engine.labs
            # Cancel (Stop while waiting) leaves the line.
            starts[5].cancel()
            await until(lambda: not line.waiters, "u5 out of the line")
            # A cancel alone may be the hub shutting down: the saved line keeps u5 ...
            kept = json.loads((tmp_path / "gpu-line.json").read_text())
            assert [w["user"] for w in kept] == ["u5"]
            await labs[5].stop()  # ... until JupyterHub's stop after the user's Stop
            assert json.loads((tmp_path / "gpu-line.json").read_text()) == []
            freed = engine.end("u2")
            late = spawner("u6")
            started = asyncio.ensure_future(late.start())
            await until(started.done, "u6 starts at once: nobody waits")
            assert engine.labs["u6"][LABEL_GPUS] == freed
            for task in starts[:5]:
                assert task.done() and task.result() == ("10.0.0.5", 8888)
    asyncio.run(main())


def test_a_newcomer_does_not_overtake_the_line(tmp_path):
    async def main():
        with hub(tmp_path) as (engine, spawner):
            await hold_every_gpu(spawner)
            waiting = asyncio.ensure_future(spawner("first").start())
            await until(lambda: len(GpuDockerSpawner._gpu_state.line) == 1, "first in line")
            # A GPU frees and, before the pump runs, a newcomer presses Start.
            freed = engine.labs.pop("u0")[LABEL_GPUS]
            newcomer = asyncio.ensure_future(spawner("newcomer").start())
            await until(lambda: "first" in engine.labs, "first gets the GPU")
            assert engine.labs["first"][LABEL_GPUS] == freed
            await until(lambda: len(GpuDockerSpawner._gpu_state.line) == 1, "the newcomer waits")
            assert GpuDockerSpawner._gpu_state.line.waiters[0].user == "newcomer"
            assert waiting.done() and not newcomer.done()
            newcomer.cancel()
            await asyncio.sleep(0)
    asyncio.run(main())


def test_the_wait_limit_is_honoured_and_leaves_nothing(tmp_path):
    async def main():
        with hub(tmp_path, queue_timeout=1) as (engine, spawner):
            await hold_every_gpu(spawner)
            late = spawner("late")
            with pytest.raises(StartRefused) as info:
                await late.start()
            assert info.value.status_code == 409 and info.value.refusal == "queue_timeout"
            assert "became free within 1 s of waiting" in info.value.log_message
            assert not GpuDockerSpawner._gpu_state.line.waiters and "late" not in engine.labs
            assert GpuDockerSpawner._gpu_state.grants.held() == {}
    asyncio.run(main())


def test_a_full_line_refuses_with_a_message(tmp_path):
    async def main():
        with hub(tmp_path, queue_max=1) as (engine, spawner):
            await hold_every_gpu(spawner)
            first = asyncio.ensure_future(spawner("w1").start())
            await until(lambda: len(GpuDockerSpawner._gpu_state.line) == 1, "w1 in line")
            with pytest.raises(web.HTTPError) as info:
                await spawner("w2").start()
            assert info.value.status_code == 409 and "1 user waits for a GPU already" in info.value.log_message
            first.cancel()
            await asyncio.sleep(0)
    asyncio.run(main())


def test_no_line_when_the_timeout_is_zero_or_for_a_limit(tmp_path):
    async def main():
        with hub(tmp_path, queue_timeout=0) as (engine, spawner):
            await hold_every_gpu(spawner)
            with pytest.raises(StartRefused) as info:
                await spawner("late").start()
            assert info.value.refusal == "gpus_busy" and "try later" in info.value.log_message
            with pytest.raises(StartRefused) as info:  # more than there are: never waits
                await spawner("greedy", asks=5).start()
            assert info.value.refusal == "gpu_limit"
    asyncio.run(main())


def test_after_a_restart_who_waited_is_told(tmp_path):
    async def main():
        (tmp_path / "gpu-line.json").write_text(json.dumps([{"user": "wanda", "gpus": 1,
                                                             "since": 1.0}]))
        roll_over(tmp_path / "gpu-line.json")  # the hub's start
        assert not (tmp_path / "gpu-line.json").exists()  # nobody waits in the new hub
        with hub(tmp_path) as (engine, spawner):
            wanda = spawner("wanda")
            wanda._spawn_pending = False

            async def no_container():
                return None

            wanda.get_object = no_container
            assert await wanda.poll() == 0
            assert "hub restarted while you waited in line" in wanda.last_stop_reason
            other = spawner("otto")
            other._spawn_pending = False
            other.get_object = no_container
            await other.poll()
            assert other.last_stop_reason == ""
    asyncio.run(main())


def test_the_progress_page_says_the_place_in_line(tmp_path):
    async def main():
        with hub(tmp_path) as (engine, spawner):
            await hold_every_gpu(spawner)
            first, second = spawner("w1"), spawner("w2")
            tasks = [asyncio.ensure_future(first.start())]
            await until(lambda: len(GpuDockerSpawner._gpu_state.line) == 1, "w1 in line")
            tasks.append(asyncio.ensure_future(second.start()))
            await until(lambda: len(GpuDockerSpawner._gpu_state.line) == 2, "w2 in line")
            events = second.progress().__aiter__()
            assert (await events.__anext__())["message"] == "Waiting for a GPU: 2nd in line"
            engine.end("u0")
            assert (await asyncio.wait_for(events.__anext__(), 10))["message"] == (
                "Waiting for a GPU: 1st in line")
            for task in tasks:
                task.cancel()
            await asyncio.sleep(0)
    asyncio.run(main())


def test_a_refusal_keeps_the_http_reason_phrase_and_counts_its_own():
    refused = StartRefused(409, "no GPU you may use became free", "queue_timeout")
    assert refused.reason is None  # tornado's phrase for 409 is used, not "queue_timeout"
    assert refused.refusal == "queue_timeout"


def test_a_freed_pinned_gpu_goes_to_the_first_in_line_who_may_use_it(tmp_path):
    """GPU-3 is reserved for p and q (GPU_PINS): when p's lab ends, q gets GPU-3 although
    u3 waited longer, and u3 keeps its place for the next unpinned GPU."""
    async def main():
        with hub(tmp_path, pins={"p": ["GPU-3"], "q": ["GPU-3"]}) as (engine, spawner):
            for user in ("u0", "u1", "u2", "p"):
                await spawner(user).start()
            assert engine.labs["p"][LABEL_GPUS] == "GPU-3"
            u3 = asyncio.ensure_future(spawner("u3").start())
            await until(lambda: len(GpuDockerSpawner._gpu_state.line) == 1, "u3 in line")
            q = asyncio.ensure_future(spawner("q").start())
            await until(lambda: len(GpuDockerSpawner._gpu_state.line) == 2, "q in line behind u3")
            assert engine.end("p") == "GPU-3"
            await until(lambda: "q" in engine.labs, "q gets its reserved GPU")
            assert engine.labs["q"][LABEL_GPUS] == "GPU-3"
            assert [w.user for w in GpuDockerSpawner._gpu_state.line.waiters] == ["u3"]
            freed = engine.end("u0")
            await until(lambda: "u3" in engine.labs, "u3 gets the next unpinned GPU")
            assert engine.labs["u3"][LABEL_GPUS] == freed
            assert u3.done() and q.done()
    asyncio.run(main())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["start", "end", "stop"]), st.integers(0, 6),
                          st.integers(1, 2), st.booleans()), min_size=8, max_size=30))
@example(steps=[("start", i, 1, False) for i in range(6)] + [("end", 0, 1, False)])
def test_property_real_spawners_never_share_a_gpu_and_serve_the_line_in_order(tmp_path_factory,
                                                                             steps):
    """Random Starts (1 or 2 GPUs), labs ending and Stops while waiting, some of them at
    the same moment, through real GpuDockerSpawners (allocator, pending grants, the line
    and its pump): no GPU is ever in two labs, and nobody who waits for n GPUs is passed
    by someone who joined the line after them for n GPUs."""
    async def settle():
        for _ in range(200):
            await asyncio.sleep(0)

    granted: list[str] = []  # users, in the order the spawner granted their GPUs
    grant_gpus = GpuDockerSpawner.grant_gpus

    def recording_grant(self, profile, held):
        ids = grant_gpus(self, profile, held)
        granted.append(self.user.name)
        return ids

    async def main():
        with hub(tmp_path_factory.mktemp("line")) as (engine, spawner), \
                pytest.MonkeyPatch.context() as mp:
            mp.setattr(GpuDockerSpawner, "grant_gpus", recording_grant)
            starts: dict[str, asyncio.Future] = {}
            joined: list[str] = []  # who was ever in line, in the order they joined
            left: set[str] = set()  # who pressed Stop while waiting
            asks: dict[str, int] = {}
            checked = 0
            for action, i, n, at_once in steps:
                user = f"u{i}"
                if action == "start" and user not in starts:  # one Start per user
                    asks[user] = n
                    starts[user] = asyncio.ensure_future(spawner(user, asks=n).start())
                elif action == "end" and user in engine.labs:
                    engine.end(user)
                elif action == "stop" and user in starts and not starts[user].done():
                    starts[user].cancel()
                    left.add(user)
                if at_once:  # the next step happens before this one has run its course
                    continue
                await settle()
                state = GpuDockerSpawner._gpu_state  # None until the first spawner asks
                for w in (state.line.waiters if state else []):
                    if w.user not in joined:
                        joined.append(w.user)
                held = [g for labels in engine.labs.values()
                        for g in labels[LABEL_GPUS].split(",") if g]
                assert len(held) == len(set(held)), engine.labs
                for user in granted[checked:]:
                    if user in joined:
                        before = granted[:granted.index(user)]
                        passed = [u for u in joined[:joined.index(user)]
                                  if asks[u] == asks[user] and u not in before
                                  and u not in left]
                        assert not passed, f"{user} was served before {passed}"
                checked = len(granted)
            for task in starts.values():
                task.cancel()
            await settle()
    asyncio.run(main())
