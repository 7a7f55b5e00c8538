"""The lab spawner of swarm mode: one Swarm service per lab, GPUs as generic resources.

Swarm, not gpuhub, picks the node and the GPUs (each GPU goes to one lab at a time).
What stays gpuhub's: profiles (image, limits, GPU count, placement), the per-user GPU
limit, hardening, a home folder on the shared SWARM_HOMES, failing fast and clearly when
no node can take the lab, and treating a lab that Swarm moved (node drained or lost) as
stopped: its kernel is gone, its files are on the shared folder, the user starts again.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import ClassVar

import docker
from docker.types import (
    ContainerSpec,
    DriverConfig,
    EndpointSpec,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    TaskTemplate,
)
from docker.utils import parse_repository_tag
from dockerspawner import SwarmSpawner
from tornado import web
from traitlets import Integer, List, Unicode

from gpuhub.core.allocator import NoGpuAvailable
from gpuhub.core.labels import PROFILE as LABEL_PROFILE
from gpuhub.core.lablimits import LOG_DRIVER, LOG_OPTIONS, TMP_PATH
from gpuhub.core.swarm import HOMES_MOUNT, LAB_GID, LAB_UID, assigned_gpus
from gpuhub.hub.spawner import GpuDockerSpawner

# Task states on the way to running; anything else after the start means the lab is gone.
_STARTING = {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready",
             "starting"}
_ENDED = {"complete", "shutdown", "failed", "rejected", "orphaned", "remove"}
# How long a stop waits for the removed service's containers to end (Swarm stops them with
# a 10 s grace period by default).
STOP_WAIT = 30


def no_node_reason(err: str, gpus: int, total_gpus: int) -> tuple[int, str] | None:
    """The user's message when Swarm's scheduler found no node for the lab, else None."""
    if "no suitable node" not in err:
        return None
    if "insufficient resources" in err and gpus:
        return 409, (f"no node has {gpus} free GPU(s) right now (the Swarm has {total_gpus} "
                     "in all, some in use or on drained nodes); choose the CPU profile or "
                     "try later")
    if "insufficient resources" in err:
        return 409, "no node has room for your lab right now; try later"
    return 409, (f"no node can run this profile ({err}); ask an admin to check the "
                 "profile's placement and the nodes' labels")


class GpuSwarmSpawner(GpuDockerSpawner, SwarmSpawner):
    """SwarmSpawner with gpuhub's profiles, GPU requests and hardening."""

    gpu_resource = Unicode("NVIDIA-GPU", help="Generic resource name of the nodes' GPUs.").tag(
        config=True)
    homes_dir = Unicode(HOMES_MOUNT, help="SWARM_HOMES as mounted in the hub.").tag(config=True)
    pids_limit = Integer(1024, help="Most processes per lab.").tag(config=True)
    tmp_size = Integer(0, help="Bytes of the lab's /tmp, a tmpfs (LAB_TMP_SIZE); 0: none."
                       ).tag(config=True)
    task_id = Unicode(help="The Swarm task the lab was started as.")
    gpu_count = Integer(0, help="GPUs this lab asked for.")
    placement = List(Unicode(), help="Placement constraints of this lab's profile.")

    # Each image's CMD, looked up once per hub process (not once per spawn).
    _image_commands: ClassVar[dict[str, list[str]]] = {}

    # --- state across hub restarts ---------------------------------------------
    def get_state(self):
        state = super().get_state()
        if self.task_id:
            state["task_id"] = self.task_id
        return state

    def load_state(self, state):
        super().load_state(state)
        self.task_id = state.get("task_id", "")

    def clear_state(self):
        super().clear_state()
        self.task_id = ""

    # --- the service -------------------------------------------------------------
    async def get_options_form(self):
        """The profiles without "N of M free": Swarm, not the hub, knows each node's GPUs."""
        return self.profiles.options_form() if self.profiles_yaml else ""

    def gpu_env(self) -> dict[str, str]:
        # void whatever Swarm grants: the NVIDIA runtime's swarm-resource setting makes
        # DOCKER_RESOURCE_<KIND> win over it, and a node without that setting then
        # exposes no GPU instead of every GPU (CUDA images set NVIDIA_VISIBLE_DEVICES=all).
        env = {"NVIDIA_VISIBLE_DEVICES": "void", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
               # The lab refuses to start with fewer GPUs than this (gpuhub_labstart.py).
               "GPUHUB_SWARM_GPUS": str(self.gpu_count)}
        if self.gpu_count:
            env.update(self.gpu_env_extra)
        return env

    def ensure_home(self) -> None:
        """Create the user's folder on the shared homes, owned by the lab user."""
        home = Path(self.homes_dir) / self.template_namespace()["username"]
        if not home.is_dir():
            home.mkdir(mode=0o750)
            os.chown(home, LAB_UID, LAB_GID)

    def service_specs(self) -> dict:
        """Keyword arguments of ``create_service`` for this lab (no Docker call)."""
        labels = self.gpu_labels()
        if self.user_options.get("profile"):
            labels[LABEL_PROFILE] = self.user_options["profile"]
        resources = Resources(
            mem_limit=self.mem_limit, cpu_limit=int(self.cpu_limit * 1e9) if self.cpu_limit else None,
            generic_resources={self.gpu_resource: self.gpu_count} if self.gpu_count else None)
        resources.setdefault("Limits", {})["Pids"] = self.pids_limit
        return {
            "name": self.object_name,
            "labels": labels,
            "task_template": TaskTemplate(
                container_spec=ContainerSpec(
                    image=self.image, env=self.get_env(), args=self._command, labels=labels,
                    mounts=self.mounts + self.tmp_mounts(), cap_drop=["ALL"]),
                resources=resources,
                # A lab that exits or loses its node stays stopped: restarting it elsewhere
                # would silently lose the kernel and could move it to other GPUs.
                restart_policy=RestartPolicy(condition="none"),
                # The lab's log is capped (rotated) on whichever node runs it.
                log_driver=DriverConfig(LOG_DRIVER, options=dict(LOG_OPTIONS)),
                placement=Placement(constraints=list(self.placement) or None),
                networks=[self.network_name] if self.network_name else [],
            ),
            "endpoint_spec": EndpointSpec(mode="dnsrr"),
        }

    def tmp_mounts(self) -> list[Mount]:
        """The lab's /tmp in memory, capped (LAB_TMP_SIZE), on whichever node runs it."""
        if not self.tmp_size:
            return []
        return [Mount(TMP_PATH, None, type="tmpfs", tmpfs_size=self.tmp_size,
                      tmpfs_mode=0o1777)]

    async def get_command(self):
        """The image's CMD plus the spawner's arguments.

        Swarm pulls images by digest and leaves no tag on the node, so the manager may
        have the layers (the labs-network keeper runs the lab image) but not the tag:
        pulling the tag then only adds it.
        """
        if self.cmd:
            return self.cmd + self.get_args()
        cmd = type(self)._image_commands.get(self.image)
        if cmd is None:
            try:
                info = await self.docker("inspect_image", self.image)
            except docker.errors.ImageNotFound:
                await self.docker("pull", *parse_repository_tag(self.image))
                info = await self.docker("inspect_image", self.image)
            cmd = type(self)._image_commands[self.image] = list(info["Config"]["Cmd"] or [])
        return cmd + self.get_args()

    async def create_object(self):
        self._command = await self.get_command()
        return await self.docker("create_service", **self.service_specs())

    async def start_object(self):
        """Wait until Swarm runs the lab's task; fail at once when no node can take it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout
        while loop.time() < deadline:
            task = await self.get_task()
            status = (task or {}).get("Status") or {}
            state = status.get("State", "")
            err = status.get("Err") or ""
            if state == "running":
                self.task_id = task["ID"]
                self.gpu_ids = assigned_gpus(task, self.gpu_resource)
                return
            reason = no_node_reason(err, self.gpu_count, len(self.gpu_inventory))
            if state == "pending" and reason:
                raise web.HTTPError(*reason)
            if state in _ENDED:
                said = await self.labs_own_words()
                raise web.HTTPError(500, f"your lab could not start ({said or err or status.get('Message') or state}); "
                                         "ask an admin to check `invoke logs`")
            await asyncio.sleep(0.2)
        raise web.HTTPError(500, f"your lab did not start within {self.boot_timeout} s")

    async def remove_object(self):
        """Remove the lab's service, then wait until its tasks' containers have ended.

        `docker service rm` returns at once; Swarm then stops the containers. Until one has
        stopped it stays on the labs network, where the service's name still resolves to
        it: a new lab of the same user (a Stop then a Start) would be taken as serving
        while the old one answers, and the user sent to a lab that is going away.
        """
        tasks = []
        if self.object_id:  # (an empty service filter would list every task)
            try:
                tasks = await self.docker("tasks", filters={"service": self.object_id})
            except docker.errors.APIError as err:  # the removal below still happens
                self.log.warning("Could not list the tasks of %s: %s", self.user.name, err)
        await super().remove_object()
        pending = {t["ID"] for t in tasks
                   if (t.get("Status") or {}).get("State") not in _ENDED}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_WAIT
        while pending:
            for ident in list(pending):
                try:
                    task = await self.docker("inspect_task", ident)
                except docker.errors.NotFound:
                    task = None
                except docker.errors.APIError as err:  # removed already: the stop stands
                    self.log.warning("Could not see whether the old lab of %s has ended: %s",
                                     self.user.name, err)
                    return
                if task is None or (task.get("Status") or {}).get("State") in _ENDED:
                    pending.discard(ident)
            if not pending:
                break
            if loop.time() > deadline:
                self.log.warning("Task(s) %s of %s still running %d s after its service was "
                                 "removed", ", ".join(sorted(pending)), self.user.name, STOP_WAIT)
                break
            await asyncio.sleep(0.2)

    async def labs_own_words(self) -> str:
        """The line a lab that refused to start wrote (``gpuhub: ...``), from its service's
        log; "" when there is none or the log cannot be read."""
        try:
            raw = await self.docker("service_logs", self.service_id, stdout=True, stderr=True,
                                    tail=20)
        except Exception:
            return ""
        return gpuhub_line(raw)

    async def _fail_if_dead(self) -> None:
        task = await self.get_task()
        status = (task or {}).get("Status") or {}
        if task is None or status.get("State") in _ENDED:
            why = (await self.labs_own_words() if task else "") or status.get("Err") or \
                status.get("Message") or "it is gone"
            raise web.HTTPError(500, f"your lab stopped while starting ({why}); try again, or "
                                     "ask an admin to check `invoke logs`")

    async def poll(self):
        task = await self.get_task()
        if task is None:
            return 0
        state = task.get("Status", {}).get("State", "")
        if self.task_id and task["ID"] != self.task_id:
            return f"moved by Swarm to task {task['ID'][:12]} ({state}); stopped"
        if state == "running" or (state in _STARTING and not self.task_id):
            return None
        return f"task {state}"

    async def start_with_gpus(self):
        """Swarm chooses the GPUs (generic resources): only the user's limit is checked
        here, then the service is created (GpuDockerSpawner.start does the rest)."""
        profile = self.resolve_profile()
        try:
            self.allocator.check_limit(self.user.name, profile.gpus,
                                       [g.name for g in getattr(self.user, "groups", [])])
        except NoGpuAvailable as err:
            raise web.HTTPError(409, str(err)) from None
        self.gpu_count = profile.gpus
        self.placement = list(profile.placement)
        self.task_id = ""
        self.gpu_ids = []
        self.ensure_home()
        return await self.create_and_serve_lab()


def gpuhub_line(raw) -> str:
    """The last ``gpuhub: `` line of a service's log (Docker's multiplexed stream or text),
    without the prefix."""
    if isinstance(raw, str):
        text = raw
    else:
        data = bytes(raw) if isinstance(raw, (bytes, bytearray)) else b"".join(raw)
        text = data.decode("utf-8", "replace")
    found = [line.split("gpuhub: ", 1)[1].strip() for line in text.splitlines()
             if "gpuhub: " in line]
    return found[-1] if found else ""
