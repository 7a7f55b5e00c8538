"""Waiting in line for a GPU: first come, first served, one place per user.

A start that finds no free GPU it may use joins the line instead of failing at once.
Whenever GPUs may have been freed (a lab stopped, any other start asks, and every few
seconds while someone waits), the hub *offers* what Docker says is held to the waiters,
in the order they came: each one whose request can be met now (its limit and pins
respected) is granted then and there, and later waiters see that grant. So a freed GPU
goes to the first in line who may use it, and a newcomer only gets a GPU that nobody in
line could take. The offer is synchronous: no other start runs between the check and the
grant (the spawner makes it under its grant snapshot).

No Docker and no JupyterHub here: the spawner gives each waiter a ``try_grant`` that
answers the GPUs it got, or None.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Held = dict[str, list[str]]


class LineFull(Exception):
    """GPU_LINE_MAX users wait already."""


@dataclass(eq=False)
class Waiter:
    user: str
    gpus: int
    try_grant: Callable[[Held], list[str] | None]
    joined: float
    granted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class GpuLine:
    """The users waiting for GPUs, in the order they came."""

    def __init__(self, max_waiting: int, clock: Callable[[], float] = time.monotonic):
        self.max_waiting = max_waiting
        self.clock = clock
        self.waiters: list[Waiter] = []
        self._waits: deque[float] = deque(maxlen=20)  # how long the last served waited

    def __len__(self) -> int:
        return len(self.waiters)

    def join(self, user: str, gpus: int, try_grant: Callable[[Held], list[str] | None],
             first: bool = False) -> Waiter:
        """Take the last place (the first: ``first``, for a start whose GPU failed under
        it); ValueError if ``user`` waits already, LineFull if full."""
        if any(w.user == user for w in self.waiters):
            raise ValueError(f"{user} is in line already")
        if len(self.waiters) >= self.max_waiting:
            raise LineFull(f"{len(self.waiters)} users wait for a GPU already")
        waiter = Waiter(user, gpus, try_grant, self.clock())
        self.waiters.insert(0 if first else len(self.waiters), waiter)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """Leave the line (served, cancelled or out of time); harmless twice."""
        if waiter in self.waiters:
            self.waiters.remove(waiter)

    def position(self, waiter: Waiter) -> int | None:
        """1 for the first in line; None once out of it."""
        try:
            return self.waiters.index(waiter) + 1
        except ValueError:
            return None

    def offer(self, held: Held) -> list[Waiter]:
        """Grant every waiter, in order, whose request can be met now; return them.

        ``held`` is what Docker lists as held; each ``try_grant`` adds its own grant to the
        pending grants the next one sees, so nothing is given twice.
        """
        served = []
        for waiter in list(self.waiters):
            if waiter.granted.done():  # cancelled meanwhile: its spawn is gone
                self.leave(waiter)
                continue
            ids = waiter.try_grant(held)
            if ids:
                self.leave(waiter)
                self._waits.append(self.clock() - waiter.joined)
                waiter.granted.set_result(ids)
                served.append(waiter)
        return served

    def as_json(self) -> list[dict]:
        """Who waits, in order, for how many GPUs, since when (epoch seconds): what the
        hub's volume keeps, and `invoke gpus`, the GPU page and the metrics show."""
        wall = time.time() - self.clock()  # this clock may be monotonic
        return [{"user": w.user, "gpus": w.gpus, "since": round(w.joined + wall, 1)}
                for w in self.waiters]

    def typical_wait(self) -> float | None:
        """The median wait of the last users served (at least 3), else None."""
        return statistics.median(self._waits) if len(self._waits) >= 3 else None


def previous_line_file(line_file: Path) -> Path:
    """Where a hub start moves the last hub's line (see :func:`roll_over`)."""
    return line_file.with_name(line_file.stem + ".before-restart" + line_file.suffix)


def roll_over(line_file: Path) -> None:
    """At hub start: the last hub's line becomes ``previous_line_file`` (the spawner tells
    those users their wait ended), and the live line is empty, not stale."""
    try:
        line_file.replace(previous_line_file(line_file))
    except FileNotFoundError:
        pass


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def waiting_message(position: int, typical: float | None) -> str:
    """What the progress page says to a user in line."""
    message = f"Waiting for a GPU: {ordinal(position)} in line"
    if typical is not None:
        minutes = max(1, round(typical / 60))
        message += f" (lately a wait took about {minutes} min)"
    return message
