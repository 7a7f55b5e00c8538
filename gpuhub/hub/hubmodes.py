"""What the hub does differently in compose and in swarm mode: one class per mode.

The hub's callers (the GPU board, usage records at start) take
``hub_mode(settings)`` and never ask which mode they are in. The tasks' side of the same
seam is ``gpuhub/tasks/composestack.py`` and ``swarmstack.py``; the spawner's is
``GpuSwarmSpawner``'s hooks.

``python3 -m gpuhub.hub.hubmodes`` prints this hub's GPU board as JSON (``invoke gpus`` runs
it in the hub container); ``... back <GPU>`` asks the hub to bring a GPU out of service back
(``invoke gpus --back``) and waits until it has.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from gpuhub.core import gpus as gpu_inventory
from gpuhub.core import lablimits, names
from gpuhub.core.labels import PROJECT as LABEL_PROJECT
from gpuhub.core.settings import Settings
from gpuhub.core.swarm import image_ref
from gpuhub.hub.telemetry import Board, compose_board, docker_lab_lister, swarm_board


class ComposeHub:
    """Compose mode: labs are containers on this Docker host, work folders are volumes."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def update_config(self, c) -> None:
        """Nothing to add: gpuhub.hub.hubconfig's configuration is compose mode's."""

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
        :func:`gpuhub.core.usage.recover`. Never stops the hub.
        """
        from datetime import UTC, datetime

        import docker

        from gpuhub.core.usage import STOPPED_WHILE_DOWN, UsageJournal, intervals, recover
        from gpuhub.hub.spawner import finished_at

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

    def __init__(self, settings: Settings):
        self.settings = settings

    def update_config(self, c) -> None:
        """Labs as Swarm services anywhere in the Swarm, homes on SWARM_HOMES."""
        s = self.settings
        c.JupyterHub.spawner_class = "gpuhub.hub.swarmspawner.GpuSwarmSpawner"
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
        c.GpuSwarmSpawner.tmp_size = lablimits.optional_bytes(s.lab_tmp_size)
        # Swarm places labs itself, with its own pending state: no line for GPUs (docs/howto/swarm.md).
        c.Spawner.start_timeout = s.spawn_timeout
        c.GpuSwarmSpawner.gpu_line_timeout = 0

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


BACK_WAIT_SECONDS = 15


def bring_back(gpu: str, data_dir: Path = Path(names.HUB_DATA_DIR),
               wait: float = BACK_WAIT_SECONDS) -> str:
    """Ask the hub to give GPU ``gpu`` (its index or UUID, as `invoke gpus` shows it) to
    labs again, and wait until it has; the line to print, or SystemExit with the reason."""
    import time

    from gpuhub.core import outofservice

    inventory = gpu_inventory.from_json(
        (data_dir / gpu_inventory.INVENTORY_FILE).read_text()
        if (data_dir / gpu_inventory.INVENTORY_FILE).exists() else "[]")
    found = [g for g in inventory if gpu.lower() in (g.index.lower(), g.uuid.lower())]
    if not found:
        sys.exit(f"error: this hub has no GPU {gpu!r}; `invoke gpus` lists its GPUs")
    device = found[0].device_id
    out_file = data_dir / names.GPU_OUT_OF_SERVICE_FILE
    if device not in {e.device for e in outofservice.read(out_file)}:
        return f"GPU {found[0].index} ({device}) is in service already"
    requests = data_dir / names.GPU_BACK_DIR
    requests.mkdir(mode=0o700, exist_ok=True)
    (requests / found[0].index).write_text(device + "\n")
    deadline = time.monotonic() + wait
    while device in {e.device for e in outofservice.read(out_file)}:
        if time.monotonic() > deadline:
            sys.exit(f"error: the hub has not brought GPU {found[0].index} back within "
                     f"{wait:g} s; is it running (`invoke status`, `invoke logs`)?")
        time.sleep(0.5)
    return (f"GPU {found[0].index} ({device}) is back in service; if it fails a lab again, "
            "it goes out again")


def main(argv: list[str] = sys.argv[1:]) -> None:
    from gpuhub.core.settings import validate

    if argv[:1] == ["back"] and len(argv) == 2:
        print(bring_back(argv[1]))
        return
    try:
        read, _ = hub_mode(validate(os.environ)).board_source()
        print(json.dumps(read().as_json()))
    except Exception as err:
        sys.exit(f"error: could not read the GPUs: {err}")


if __name__ == "__main__":
    main()
