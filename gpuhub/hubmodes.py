"""What the hub does differently in compose and in swarm mode: one class per mode.

The hub's callers (user admin, the GPU board, usage records at start) take
``hub_mode(settings)`` and never ask which mode they are in. The tasks' side of the same
seam is ``gpuhub/tasks/composestack.py`` and ``swarmstack.py``; the spawner's is
``GpuSwarmSpawner``'s hooks.

``python3 -m gpuhub.hubmodes`` prints this hub's GPU board as JSON (``invoke gpus`` runs
it in the hub container).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from . import gpus as gpu_inventory
from . import names
from .labels import PROJECT as LABEL_PROJECT
from .settings import Settings
from .swarm import HOMES_MOUNT, image_ref
from .telemetry import Board, compose_board, docker_lab_lister, swarm_board


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


class ComposeHub:
    """Compose mode: labs are containers on this Docker host, work folders are volumes."""

    # The gpu-sampler reads this host's GPUs: the reclaimer can tell idle ones.
    reclaims_idle_gpus = True

    def __init__(self, settings: Settings):
        self.settings = settings

    def update_config(self, c) -> None:
        """Nothing to add: gpuhub.hubconfig's configuration is compose mode's."""

    def work_folder(self, name: str) -> WorkVolume:
        return WorkVolume(self.settings, name)

    def board_source(self, list_labs: Callable[[], list[dict]] | None = None,
                     inventory_file: Path = Path(names.HUB_DATA_DIR) / gpu_inventory.INVENTORY_FILE,
                     ) -> tuple[Callable[[], Board], float]:
        """How to read the GPU board (the sampler's readings and the labs), and how often."""
        project = self.settings.compose_project_name
        list_labs = list_labs or docker_lab_lister(project)

        def read() -> Board:
            inventory = gpu_inventory.from_json(
                inventory_file.read_text() if inventory_file.exists() else "[]")
            return compose_board(project, self.settings.gpu_policy, inventory, list_labs)

        return read, float(self.settings.gpu_sample_interval)

    def recover_usage(self, journal_path: Path, log, client=None) -> None:
        """At hub start: make the usage journal agree with the labs Docker has now.

        A lab that stopped while the hub was down is usually still there, exited (labs are
        not auto-removed): its record closes at the time Docker says it finished. Labs that
        are gone entirely, and running labs the journal misses, are left to
        :func:`gpuhub.usage.recover`. Never stops the hub.
        """
        from datetime import UTC, datetime

        import docker

        from .spawner import finished_at
        from .usage import STOPPED_WHILE_DOWN, UsageJournal, intervals, recover

        journal = UsageJournal(journal_path, log=log)
        try:
            client = client or docker.from_env(timeout=10)
            labs = client.api.containers(all=True, filters={
                "label": f"{LABEL_PROJECT}={self.settings.compose_project_name}"})
            still_open = {i.lab for i in intervals(journal.read().events) if i.stop is None}
            for lab in labs:
                if lab.get("State") != "running" and lab["Id"] in still_open:
                    state = client.api.inspect_container(lab["Id"]).get("State") or {}
                    why = "out of memory" if state.get("OOMKilled") else (
                        f"exit code {state.get('ExitCode')}")
                    journal.stopped(lab["Id"], finished_at(state), f"{STOPPED_WHILE_DOWN} ({why})")
        except Exception as err:
            log.warning("Usage records not checked against Docker at start: %s", err)
            return
        running = [{"id": c["Id"], "labels": c.get("Labels") or {}} for c in labs
                   if c.get("State") == "running"]
        done = recover(journal, running, datetime.now(UTC))
        if done.closed or done.opened:
            log.info("Usage records recovered: %d lab(s) closed, %d opened", len(done.closed),
                     len(done.opened))




class SwarmHub:
    """Swarm mode: labs are Swarm services on any node, work folders are under SWARM_HOMES."""

    # The gpu-sampler is single-host: nothing tells the reclaimer which node's GPU is idle.
    reclaims_idle_gpus = False

    def __init__(self, settings: Settings):
        self.settings = settings

    def update_config(self, c) -> None:
        """Labs as Swarm services anywhere in the Swarm, homes on SWARM_HOMES."""
        s = self.settings
        c.JupyterHub.spawner_class = "gpuhub.swarmspawner.GpuSwarmSpawner"
        # Every node pulls the lab image from REGISTRY (the hub image comes from there too).
        c.DockerSpawner.image = image_ref(s, s.lab_image)
        # A folder on the shared filesystem, the same path on every node, instead of a
        # per-node Docker volume: the user's files follow the lab to whichever node runs it.
        volumes: dict = {f"{s.swarm_homes}/{{username}}": names.WORK_MOUNT}
        if s.shared_data_dir:
            volumes[s.shared_data_dir] = {"bind": names.SHARED_MOUNT, "mode": "ro"}
        c.DockerSpawner.volumes = volumes
        c.GpuSwarmSpawner.gpu_resource = s.swarm_gpu_resource
        # Labs boot on many nodes: the hub's own cores say nothing about when to start the next.
        c.GpuSwarmSpawner.lab_start_concurrency = 0
        c.GpuSwarmSpawner.pids_limit = s.lab_pids_limit
        # Swarm places labs itself, with its own pending state: no line for GPUs (README).
        c.Spawner.start_timeout = s.spawn_timeout
        c.GpuSwarmSpawner.gpu_queue_timeout = 0

    def work_folder(self, name: str) -> SwarmHome:
        return SwarmHome(self.settings, name)

    def board_source(self) -> tuple[Callable[[], Board], float]:
        """Every node's GPUs and the lab tasks holding them (no utilisation: the sampler is
        a single-host service)."""
        return (lambda: swarm_board(self.settings)), float(self.settings.gpu_sample_interval)

    def recover_usage(self, journal_path: Path, log, client=None) -> None:
        """Swarm labs are services, not containers: their records come from the hub's own
        starts and stops only."""


def hub_mode(settings: Settings) -> ComposeHub | SwarmHub:
    """The hub's side of ``settings.mode``."""
    return SwarmHub(settings) if settings.mode == "swarm" else ComposeHub(settings)


def main() -> None:
    from .settings import validate

    try:
        read, _ = hub_mode(validate(os.environ)).board_source()
        print(json.dumps(read().as_json()))
    except Exception as err:
        sys.exit(f"error: could not read the GPUs: {err}")


if __name__ == "__main__":
    main()
