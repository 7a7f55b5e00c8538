"""The one waiting helper every test uses: a deadline on a monotonic clock, never sleep-and-hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """Raised when a condition did not hold in time; the message carries state and logs."""


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.5,
    what: str = "condition",
    state: Callable[[], object] | None = None,
    logs: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` until it returns something truthy; return that value.

    On timeout, raise WaitTimeout naming ``what``, the last value (or ``state()``), the
    last exception the predicate raised, and ``logs()`` (e.g. ``docker compose logs``).
    """
    deadline = time.monotonic() + timeout
    last, error = None, None
    while True:
        try:
            last = predicate()
            error = None
            if last:
                return last
        except Exception as exc:  # keep waiting, but remember why it failed
            error = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    parts = [f"timed out after {timeout:.0f}s waiting for {what}",
             f"last value: {last!r}"]
    if error is not None:
        parts.append(f"last error: {type(error).__name__}: {error}")
    if state is not None:
        try:
            parts.append(f"state: {state()!r}")
        except Exception as exc:
            parts.append(f"state unavailable: {exc}")
    if logs is not None:
        try:
            parts.append("logs:\n" + logs())
        except Exception as exc:
            parts.append(f"logs unavailable: {exc}")
    raise WaitTimeout("\n".join(parts))
