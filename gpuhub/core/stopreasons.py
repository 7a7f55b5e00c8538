"""Why a lab was stopped: the reclaimer leaves the reason, the spawner's stop() takes it.

One file per user in ``stop-reasons/`` on the hub's volume.
"""

from __future__ import annotations

from pathlib import Path

from gpuhub.core import names
from gpuhub.core.files import write_atomically

REASONS_DIR = Path(names.HUB_DATA_DIR) / names.STOP_REASONS_DIR


def leave_reason(user: str, reason: str, folder: Path = REASONS_DIR) -> None:
    """Where the spawner's stop() finds why (names are checked: letters, digits, _ and -)."""
    write_atomically(folder / user, reason, mode=0o600)


def take_reason(user: str, folder: Path = REASONS_DIR) -> str:
    """The reason left for ``user``'s stop, once ("" if none)."""
    path = folder / user
    try:
        reason = path.read_text().strip()
        path.unlink()
    except OSError:
        return ""
    return reason
