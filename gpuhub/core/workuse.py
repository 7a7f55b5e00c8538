"""Each user's work-folder use under WORK_QUOTA, as the broker reports it.

The broker (docker-proxy) keeps the quotas (gpuhub/broker/workfolders.py) and answers
``GET /gpuhub/work-folders`` with ``{"quota": bytes, "folders": {escaped user: {"used":
bytes, "limit": bytes}}}``. The hub (metrics, the user's note, the admin page) and `invoke
users` read it through :func:`fetch`; what they show is worded here once.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from gpuhub.core import names

FETCH_TIMEOUT = 5  # seconds
FULL_SHARE = 0.95  # a folder this full is "full" to its user: the next big write fails


@dataclass(frozen=True)
class FolderUse:
    used: int
    limit: int

    @property
    def full(self) -> bool:
        return bool(self.limit) and self.used >= self.limit * FULL_SHARE


def parse(data: bytes) -> dict[str, FolderUse]:
    """The broker's answer as {escaped user: use}; ValueError for anything else."""
    answer = json.loads(data)
    folders = answer.get("folders") if isinstance(answer, dict) else None
    if not isinstance(folders, dict):
        raise ValueError("not a work-folder report")
    found = {}
    for suffix, use in folders.items():
        if not (isinstance(use, dict) and all(isinstance(use.get(k), int) and
                                              not isinstance(use.get(k), bool)
                                              for k in ("used", "limit"))):
            raise ValueError(f"bad work-folder entry for {suffix!r}")
        found[str(suffix)] = FolderUse(use["used"], use["limit"])
    return found


def fetch(docker_host: str) -> dict[str, FolderUse]:
    """The broker's report; ``docker_host``: DOCKER_HOST (tcp://docker-proxy:2375).
    Raises OSError or ValueError when there is none (no broker, WORK_QUOTA=none)."""
    if not docker_host.startswith("tcp://"):
        raise ValueError("the hub reaches Docker without the broker: no work-folder report")
    url = "http://" + docker_host[len("tcp://"):].rstrip("/") + names.WORK_FOLDERS_PATH
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT) as answer:  # noqa: S310 (http only)
        return parse(answer.read())


def of_user(report: Mapping[str, FolderUse], user: str) -> FolderUse | None:
    return report.get(names.escape_user(user))


def size(count: int) -> str:
    """Bytes as an admin reads them: ``12.3 GiB``, ``48.0 MiB``."""
    gib = count / 1024 ** 3
    return f"{gib:.1f} GiB" if gib >= 1 else f"{count / 1024 ** 2:.1f} MiB"


def text(use: FolderUse | None) -> str:
    """``12.3 GiB of 50.0 GiB`` (``-``: the folder is not made yet, or has no quota)."""
    if use is None:
        return "-"
    if not use.limit:
        return f"{size(use.used)} (no quota)"
    return f"{size(use.used)} of {size(use.limit)}"


def full_note(use: FolderUse | None) -> str:
    """The one line a user whose work folder is full reads on the hub's pages; "" if not."""
    if use is None or not use.full:
        return ""
    return (f"Your work folder is full: {text(use)}. Writes to ~/work fail with \"Disk quota "
            "exceeded\" until you delete files there (or ask your admin for more room).")
