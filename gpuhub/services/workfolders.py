"""A user's work folder, as the user CLI in the hub container removes it (`invoke deluser
--purge-data`): a Docker volume (compose mode) or a folder under SWARM_HOMES (swarm mode).

The host's side of the same (backup, restore, adduser's check) is the tasks' stack seam;
each runs where the other cannot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from gpuhub.core import names
from gpuhub.core.settings import Settings
from gpuhub.core.swarm import HOMES_MOUNT


class Unfinished(Exception):
    """Part of the request was done; the message says what is left to do by hand."""


class WorkVolume:
    """Compose mode: the user's work folder is a Docker volume (reached through docker-proxy)."""

    def __init__(self, settings: Settings, name: str):
        self.volume = names.work_volume(settings.compose_project_name, name)

    def exists(self) -> bool:
        import docker

        try:
            docker.from_env().volumes.get(self.volume)
        except docker.errors.NotFound:
            return False
        return True

    def remove(self) -> str:
        import docker

        try:
            docker.from_env().volumes.get(self.volume).remove()
        except docker.errors.NotFound:
            return f"no work volume {self.volume} to remove"
        except docker.errors.APIError as err:  # e.g. still in use by a container
            raise Unfinished(f"the work volume {self.volume} could not be removed "
                             f"({err.explanation}); remove it with `docker volume rm "
                             f"{self.volume}` once no container uses it") from None
        return f"removed work volume {self.volume}"


class SwarmHome:
    """Swarm mode: the user's work folder is SWARM_HOMES/<user>, which the hub has at
    HOMES_MOUNT and created there (GpuSwarmSpawner.ensure_home)."""

    def __init__(self, settings: Settings, name: str, homes: Path | None = None):
        folder = names.escape_user(name)  # [a-z0-9-] only: never a path of its own
        self.path = Path(homes or HOMES_MOUNT) / folder
        self.on_nodes = f"{settings.swarm_homes}/{folder}"

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def remove(self) -> str:
        by_hand = f"remove it on a node that mounts SWARM_HOMES: sudo rm -r -- {self.on_nodes}"
        if not self.path.parent.is_dir():
            raise Unfinished(f"SWARM_HOMES is not mounted in the hub at {self.path.parent}; "
                             f"{by_hand}")
        if self.path.is_symlink():
            self.path.unlink()  # the link itself, never what it points to
            return f"removed the link {self.on_nodes} (not what it points to)"
        if self.exists() and not self.path.is_dir():
            self.path.unlink()
            return f"removed {self.on_nodes} (a file, not a folder)"
        if not self.exists():
            return f"no work folder {self.on_nodes} to remove"
        # rmtree follows no symbolic link out of the folder (it works on open directories)
        # where the platform allows that; elsewhere leave it to the admin.
        if not shutil.rmtree.avoids_symlink_attacks:
            raise Unfinished(f"the work folder {self.on_nodes} was kept (this platform cannot "
                             f"remove it without following links); {by_hand}")
        try:
            shutil.rmtree(self.path)
        except OSError as err:
            raise Unfinished(f"the work folder {self.on_nodes} could not be removed "
                             f"({err.strerror}: {err.filename}); {by_hand}") from None
        return f"removed work folder {self.on_nodes}"


def work_folder(settings: Settings, name: str) -> WorkVolume | SwarmHome:
    """User ``name``'s work folder in this mode."""
    return SwarmHome(settings, name) if settings.mode == "swarm" else WorkVolume(settings, name)
