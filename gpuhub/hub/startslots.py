"""At most N labs booting at once; the others wait their turn, first come, first served.

A lab's first seconds are its Jupyter server importing Python modules: pure CPU. When more
labs boot at once than the machine has cores, they share the cores and every one of them
takes longer; and the time-slicing between them costs CPU of its own (caches go cold), so
the last one is ready later than if they had booted in turn. With a queue the first users
are in within seconds, and the last is no later (bench/: `nox -s bench`).

A slot is held from ``docker start`` until the lab accepts connections, and never longer
than ``max_hold`` seconds: a lab that hangs while booting does not hold the others up.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable


class StartSlot(enum.Enum):
    """Where one start is with its slot: the spawn's progress says so while it waits."""

    NOT_YET = "not yet"  # the start has not asked for one (profile, GPUs, image first)
    WAITING = "waiting"  # asked, in line for a slot
    HELD = "held"  # from `docker start` until the lab serves
    DONE = "done"  # given back (served, failed or refused)


class StartSlots:
    """``slots`` labs may boot at once (0: no limit)."""

    def __init__(self, slots: int, max_hold: float = 30.0):
        if slots < 0:
            raise ValueError(f"slots must be 0 (no limit) or more, not {slots!r}")
        self.slots = slots
        self.max_hold = max_hold
        self._free = slots
        self._waiters: deque[asyncio.Future] = deque()

    @property
    def booting(self) -> int:
        """Labs holding a slot now."""
        return self.slots - self._free if self.slots else 0

    @property
    def waiting(self) -> int:
        """Labs waiting for a slot now."""
        return sum(1 for w in self._waiters if not w.done())

    async def acquire(self) -> Callable[[], None]:
        """Wait for a slot; return the function that gives it back (calling it twice is fine)."""
        if not self.slots:
            return lambda: None
        if self._free and not self._waiters:
            self._free -= 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._hand_over()  # the slot reached us as we were cancelled: pass it on
                elif waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                timer.cancel()
                self._hand_over()

        timer = asyncio.get_running_loop().call_later(self.max_hold, release)
        return release

    def _hand_over(self) -> None:
        """Give a freed slot straight to the longest waiter, else back to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
