"""StartSlots: at most N labs boot at once, the others in the order they asked."""

import asyncio

import pytest

from gpuhub.hub.startslots import StartSlots


def test_no_limit_never_waits():
    async def main():
        queue = StartSlots(0)
        releases = [await queue.acquire() for _ in range(50)]
        assert queue.waiting == 0
        for release in releases:
            release()
    asyncio.run(main())


def test_at_most_n_boot_at_once_and_the_rest_go_first_come_first_served():
    async def main():
        queue = StartSlots(2)
        booting, most, order = set(), 0, []

        async def lab(name):
            nonlocal most
            release = await queue.acquire()
            order.append(name)
            booting.add(name)
            most = max(most, len(booting))
            await asyncio.sleep(0.01)
            booting.discard(name)
            release()

        await asyncio.gather(*(lab(i) for i in range(7)))
        return most, order

    most, order = asyncio.run(main())
    assert most == 2
    assert order == list(range(7))


def test_giving_back_twice_frees_one_slot_only():
    async def main():
        queue = StartSlots(1)
        release = await queue.acquire()
        release()
        release()
        await queue.acquire()
        second = asyncio.ensure_future(queue.acquire())
        await asyncio.sleep(0.01)
        assert not second.done(), "a double release must not make two slots of one"
        second.cancel()
    asyncio.run(main())


def test_a_lab_that_hangs_while_booting_holds_its_slot_only_so_long():
    async def main():
        queue = StartSlots(1, max_hold=0.05)
        await queue.acquire()  # never given back
        await asyncio.wait_for(queue.acquire(), timeout=2)
    asyncio.run(main())


def test_a_cancelled_waiter_does_not_keep_a_slot():
    async def main():
        queue = StartSlots(1)
        release = await queue.acquire()
        gone = asyncio.ensure_future(queue.acquire())
        await asyncio.sleep(0.01)
        assert queue.waiting == 1
        gone.cancel()
        await asyncio.sleep(0)
        release()
        await asyncio.wait_for(queue.acquire(), timeout=1)
    asyncio.run(main())


def test_a_negative_count_is_refused():
    with pytest.raises(ValueError, match="0 \\(no limit\\) or more"):
        StartSlots(-1)
