"""Labels gpuhub writes on every lab container: Docker is the record of who holds what."""

from __future__ import annotations

from collections.abc import Mapping

PROJECT = "gpuhub.project"
USER = "gpuhub.user"
GPUS = "gpuhub.gpus"
SINCE = "gpuhub.since"
PROFILE = "gpuhub.profile"
# On the broker's helper that moves a plain work volume into its quota'd folder: whose.
WORK_MOVE = "gpuhub.work-move"


def gpus_of(labels: Mapping[str, str]) -> list[str]:
    """The device IDs a lab's GPUS label names (none: [])."""
    return [d for d in (labels.get(GPUS) or "").split(",") if d]
