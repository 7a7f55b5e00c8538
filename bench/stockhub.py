"""The stock DockerSpawner hub the benchmark compares against (bench/stock-compose.yml)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests

from harness.stack import free_port
from harness.wait import wait_until

HERE = Path(__file__).resolve().parent
COMPOSE_FILE = HERE / "stock-compose.yml"


@dataclass
class StockHub:
    project: str
    hub_image: str
    lab_image: str
    lab_command: list[str]
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def compose(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        env = {**os.environ, "BENCH_PROJECT": self.project, "BENCH_HUB_IMAGE": self.hub_image,
               "BENCH_LAB_IMAGE": self.lab_image, "BENCH_PORT": str(self.port),
               "BENCH_SPAWN_CMD": json.dumps(self.lab_command),
               "BENCH_USER_PASSWORD": self.password}
        return subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), *args], env=env,
                              capture_output=True, text=True, check=check)

    def logs(self, tail: int = 100) -> str:
        """The hub's last ``tail`` log lines, whole: the trace reads every storm's steps
        and request times from them."""
        out = self.compose("logs", "--no-color", "--tail", str(tail))
        return out.stdout + out.stderr

    def up(self, timeout: float = 120) -> None:
        result = self.compose("up", "-d")
        if result.returncode != 0:
            raise RuntimeError(f"stock hub did not start: {result.stderr.strip()[-2000:]}")
        wait_until(lambda: requests.get(f"{self.url}/hub/health", timeout=2).ok,
                   timeout=timeout, interval=0.2, what="the stock hub to answer /hub/health",
                   logs=self.logs)

    def hub_container(self) -> str:
        return self.compose("ps", "-q", "jupyterhub", check=True).stdout.strip()

    def lab_container(self, user: str) -> str:
        return f"{self.project}-{user}"  # DockerSpawner's default name_template

    def teardown(self, client) -> None:
        """Remove the labs, the hub, its volume and network, and the users' volumes."""
        mine = f"{self.project}-"
        for container in client.containers.list(all=True, filters={"name": self.project}):
            if container.name.startswith(mine):
                # Labs remove themselves on stop: gone, or being removed, is fine, but
                # wait until it is gone so the network and the volumes can go too.
                remove_container(client, container.id)
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5")
        for volume in client.volumes.list(filters={"name": self.project}):
            if volume.name.startswith(mine):
                wait_until(lambda v=volume: _removed(v.remove, force=True), timeout=30,
                           interval=0.5, what=f"volume {volume.name} to be removed")


def remove_container(client, container_id: str) -> None:
    """Remove a container; while Docker is already removing it, wait until it is gone."""
    wait_until(lambda: _removed(client.api.remove_container, container_id, force=True),
               timeout=60, interval=0.5, what=f"container {container_id[:12]} to be removed")


def _removed(remove, *args, **kwargs) -> bool:
    try:
        remove(*args, **kwargs)
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError as err:
        if err.status_code == 409:  # in use, or its removal already in progress: retry
            return False
        raise
    return True
