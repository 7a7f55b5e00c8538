"""The lab spawner: DockerSpawner plus GPUs handed over as Docker device requests.

Each lab gets exactly the device IDs in ``gpu_ids`` and ``NVIDIA_VISIBLE_DEVICES`` set
explicitly (``void`` for none): CUDA base images set it to ``all``, and on hosts whose
default runtime is ``nvidia`` that variable alone would expose every GPU.
The grant is also written on the container as labels, so Docker is the record of who
holds which GPU.
"""

from __future__ import annotations

import datetime

from dockerspawner import DockerSpawner
from docker.types import DeviceRequest
from traitlets import List, Unicode

LABEL_USER = "gpuhub.user"
LABEL_GPUS = "gpuhub.gpus"
LABEL_SINCE = "gpuhub.since"


class GpuDockerSpawner(DockerSpawner):
    """DockerSpawner that gives each lab its GPUs through device requests."""

    gpu_inventory = List(
        Unicode(),
        help="Device IDs (UUIDs or indices) of the host GPUs labs may use; "
        "filled from GPUHUB_GPU_INVENTORY by gpuhub.hubconfig.",
    ).tag(config=True)

    gpu_ids = List(Unicode(), help="Device IDs granted to this lab while it runs.")

    def grant_gpus(self) -> list[str]:
        """Choose this lab's GPUs: every GPU in the inventory."""
        return list(self.gpu_inventory)

    def gpu_env(self) -> dict[str, str]:
        return {
            "NVIDIA_VISIBLE_DEVICES": ",".join(self.gpu_ids) or "void",
            "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
            "GPUHUB_GPUS": ",".join(self.gpu_ids),
        }

    def get_env(self):
        env = super().get_env()
        env.update(self.gpu_env())
        return env

    def gpu_host_config(self) -> dict:
        if not self.gpu_ids:
            return {}
        return {"device_requests": [
            DeviceRequest(driver="nvidia", device_ids=list(self.gpu_ids), capabilities=[["gpu"]])
        ]}

    def gpu_labels(self) -> dict[str, str]:
        return {
            LABEL_USER: self.user.name,
            LABEL_GPUS: ",".join(self.gpu_ids),
            LABEL_SINCE: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    async def create_object(self):
        # Instance-level copies: the class-wide config values stay untouched.
        base_host = self._eval_if_callable(self.extra_host_config) or {}
        base_create = self._eval_if_callable(self.extra_create_kwargs) or {}
        self.extra_host_config = {**base_host, **self.gpu_host_config()}
        labels = {**base_create.get("labels", {}), **self.gpu_labels()}
        self.extra_create_kwargs = {**base_create, "labels": labels}
        return await super().create_object()

    async def start(self):
        self.gpu_ids = self.grant_gpus()
        return await super().start()

    async def stop(self, now=False):
        await super().stop(now=now)
        self.gpu_ids = []
