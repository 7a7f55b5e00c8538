"""What a storm of starts asks Docker: the guards' health question once for the starts
that ask together, and nothing at all for a lab without GPUs."""

from __future__ import annotations

import asyncio

import pytest
from traitlets.config import Config

from gpuhub.core.profiles import Profile
from gpuhub.hub.spawner import GpuDockerSpawner, StartRefused
from support.spawners import fresh_hub_process, user_spawner


@pytest.fixture
def hub(monkeypatch):
    fresh_hub_process(monkeypatch)
    config = Config()
    config.GpuDockerSpawner.gpu_inventory = []
    config.GpuDockerSpawner.require_lab_firewall = True
    return config


def test_starts_that_ask_together_share_one_health_question_and_a_later_one_asks_again(hub):
    asked: list[asyncio.Future] = []

    async def docker(method, *args, **kwargs):
        assert method == "containers" and kwargs["filters"]["health"] == "healthy"
        answer = asyncio.get_running_loop().create_future()
        asked.append(answer)
        return await answer

    async def storm():
        labs = [user_spawner(hub, f"u{i}") for i in range(5)]
        for lab in labs:
            lab.docker = docker
        checks = [asyncio.ensure_future(lab.check_lab_firewall()) for lab in labs]
        await asyncio.sleep(0.01)
        assert len(asked) == 1, "five starts, one question on its way"
        asked[0].set_result([{"Id": "fw"}])
        await asyncio.gather(*checks)
        # An answer that has arrived is not reused: the firewall may be down by now.
        later = asyncio.ensure_future(labs[0].check_lab_firewall())
        await asyncio.sleep(0.01)
        assert len(asked) == 2
        asked[1].set_result([])
        with pytest.raises(StartRefused) as refused:
            await later
        assert refused.value.refusal == "lab_firewall_down"

    asyncio.run(storm())


def test_both_guards_are_asked_at_once_and_either_one_down_or_unknown_refuses(hub):
    hub.GpuDockerSpawner.require_lab_memory = True
    asked: dict[str, asyncio.Future] = {}

    async def docker(method, *args, **kwargs):
        service = kwargs["filters"]["label"][1].rpartition("=")[2]
        asked[service] = asyncio.get_running_loop().create_future()
        return await asked[service]

    async def start(answers: dict):
        asked.clear()
        lab = user_spawner(hub, "dana")
        lab.docker = docker
        check = asyncio.ensure_future(lab.check_lab_firewall())
        await asyncio.sleep(0.01)
        assert sorted(asked) == ["lab-firewall", "lab-memory"], "both on their way at once"
        for service, answer in answers.items():
            if isinstance(answer, Exception):
                asked[service].set_exception(answer)
            else:
                asked[service].set_result(answer)
        return await check

    healthy = [{"Id": "x"}]
    assert asyncio.run(start({"lab-firewall": healthy, "lab-memory": healthy})) is None
    with pytest.raises(StartRefused) as refused:
        asyncio.run(start({"lab-firewall": healthy, "lab-memory": []}))
    assert refused.value.refusal == "lab_memory_down"
    with pytest.raises(StartRefused) as refused:
        asyncio.run(start({"lab-memory": healthy, "lab-firewall": []}))
    assert refused.value.refusal == "lab_firewall_down"
    with pytest.raises(OSError):
        asyncio.run(start({"lab-firewall": OSError("broker gone"), "lab-memory": healthy}))


def test_a_start_that_cancels_does_not_cancel_the_others_question(hub):
    asked: list[asyncio.Future] = []

    async def docker(method, *args, **kwargs):
        answer = asyncio.get_running_loop().create_future()
        asked.append(answer)
        return await answer

    async def storm():
        first, second = user_spawner(hub, "a"), user_spawner(hub, "b")
        first.docker = second.docker = docker
        one = asyncio.ensure_future(first.check_lab_firewall())
        two = asyncio.ensure_future(second.check_lab_firewall())
        await asyncio.sleep(0.01)
        one.cancel()
        await asyncio.sleep(0.01)
        asked[0].set_result([{"Id": "fw"}])
        await two  # answered: healthy
        assert one.cancelled() and len(asked) == 1

    asyncio.run(storm())


def test_a_lab_without_gpus_asks_docker_nothing_for_its_grant(hub):
    lab = user_spawner(hub, "carol")

    async def docker(*args, **kwargs):
        raise AssertionError("a CPU start asked Docker what is held")

    lab.docker = docker
    assert asyncio.run(lab.grant_from_docker(Profile(slug="cpu", display_name="CPU",
                                                     gpus=0))) == []


def test_a_lone_lab_is_tried_every_50_ms_and_labs_in_a_storm_less_often():
    from gpuhub.hub.spawner import serving_poll_interval
    assert serving_poll_interval(0) == serving_poll_interval(1) == 0.05
    assert serving_poll_interval(10) == pytest.approx(0.5)
    assert serving_poll_interval(40) == 1.0


def test_a_storms_labs_together_ask_docker_whether_they_died_at_most_4_times_a_second():
    from gpuhub.hub.spawner import dead_check_interval
    assert dead_check_interval(1) == dead_check_interval(4) == 1.0  # a lone lab: every second
    for booting in (1, 2, 4, 8, 10, 20):
        assert booting / dead_check_interval(booting) <= 4
    assert dead_check_interval(100) == 5.0  # still noticed within 5 s


def test_the_count_of_booting_labs_goes_back_down_when_a_lab_serves_or_fails(hub, monkeypatch):
    lab = user_spawner(hub, "dana")
    lab.boot_timeout = 1

    async def refused(host, port):
        raise ConnectionRefusedError

    async def still_running():
        return None

    monkeypatch.setattr(asyncio, "open_connection", refused)
    lab._fail_if_dead = still_running
    with pytest.raises(StartRefused):
        asyncio.run(lab.wait_until_serving("10.0.0.9", 8888))
    assert GpuDockerSpawner._booting == 0
