"""GPU grants that Docker's labels may not show yet, kept until no snapshot can miss them.

The spawner grants GPUs from a snapshot of Docker (the labels on running labs) plus
these grants. A grant is made before its lab's container exists and ends with its
spawn, when the container runs (or was removed again). A snapshot of Docker that was
asked for before that container existed can still be on its way back, though: were the
grant forgotten when the spawn ends, neither that snapshot nor the grants would show
the GPU, and it would be handed out twice. So a grant that has ended is forgotten only
once every snapshot asked for before it ended has been used.

Why that is enough: a snapshot asked for after a grant ended was asked for after the
lab's container was created, so Docker lists it for as long as it runs. One asked for
earlier is still open while the spawn that took it grants (``snapshot()`` spans the
Docker call and the grant), so the ended grant is still here.

Every method runs on the hub's event loop without an await, so each is atomic.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator


class PendingGrants:
    """The GPU grants of spawns in flight (and of just-ended ones, while they matter)."""

    def __init__(self):
        self._clock = itertools.count()
        self._grants: dict[int, tuple[str, list[str]]] = {}  # ticket -> user, device IDs
        self._ended: dict[int, int] = {}  # ticket -> when its spawn ended
        self._snapshots: set[int] = set()  # when each snapshot still in use was asked for

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Span asking Docker what is held *and* granting from the answer."""
        asked = next(self._clock)
        self._snapshots.add(asked)
        try:
            yield
        finally:
            self._snapshots.discard(asked)
            self._forget_ended()

    def add(self, user: str, device_ids: list[str]) -> int:
        """Record a grant; returns its ticket for ``end()``."""
        ticket = next(self._clock)
        self._grants[ticket] = (user, list(device_ids))
        return ticket

    def end(self, ticket: int) -> None:
        """The spawn is over: its container runs, or it was removed."""
        if ticket in self._grants and ticket not in self._ended:
            self._ended[ticket] = next(self._clock)
            self._forget_ended()

    def held(self) -> dict[str, list[str]]:
        """Device IDs by user, of every grant still kept."""
        held: dict[str, list[str]] = {}
        for user, device_ids in self._grants.values():
            held.setdefault(user, []).extend(device_ids)
        return held

    def _forget_ended(self) -> None:
        oldest = min(self._snapshots, default=None)
        for ticket, ended in list(self._ended.items()):
            if oldest is None or ended < oldest:
                del self._ended[ticket], self._grants[ticket]
