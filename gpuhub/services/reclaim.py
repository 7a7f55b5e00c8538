"""Reclaim idle GPUs and enforce profiles' time limits: the hub's gpu-reclaimer service.

A hub-managed service (like the idle culler), every GPU_SAMPLE_INTERVAL seconds:

- a GPU lab whose GPUs have *all* been idle (utilisation under GPU_IDLE_UTILISATION, as
  the gpu-sampler reads it) for GPU_IDLE_TIMEOUT is stopped, or for the shorter
  GPU_IDLE_TIMEOUT_WHILE_WAITING while someone waits in line for a GPU. Idle time counts
  from when the GPU went idle or the lab started, whichever is later. No reading, a stale
  reading, or a GPU whose utilisation the driver does not report: never idle (a lab is
  never stopped on missing data). Under GPU_POLICY=shared every GPU lab holds every GPU,
  so labs are reclaimed only while all GPUs are idle.
- a lab older than its profile's ``max_age`` is stopped.

Stopping goes through the hub's REST API (the ``delete:servers`` scope), so JupyterHub
stops the lab the normal way and the user's work folder is kept. The reason is written
first into ``stop-reasons/<user>`` on the hub's volume; the spawner's stop() takes it, puts
it in the hub log and the GPU-hours records, and the user reads it on their home page.
CPU labs are left to the idle culler.

It also removes labs whose user the hub no longer has (every SWEEP_ROUNDS rounds, once a
lab is ORPHAN_AFTER seconds old), and says so in its log: no lab outlives its account,
whatever state its start was in when the user was deleted. A lab is a container in compose
mode and a Swarm service in swarm mode (:class:`ContainerLabs`, :class:`ServiceLabs`);
in swarm mode it only sweeps, since the gpu-sampler cannot say which node's GPU is idle.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gpuhub.core import names
from gpuhub.core.gpureport import Lab, duration
from gpuhub.core.labels import PROJECT as LABEL_PROJECT
from gpuhub.core.labels import USER as LABEL_USER
from gpuhub.core.stopreasons import leave_reason
from gpuhub.core.usage import parse_time

# Do not ask again for a lab whose stop was asked for this recently (stopping takes time).
ASKED_AGAIN_AFTER = 120
# Lab containers whose user the hub no longer has are looked for every SWEEP_ROUNDS rounds
# (of GPU_SAMPLE_INTERVAL), and removed once Docker made them ORPHAN_AFTER seconds ago (a
# hub only makes labs for users it has; the wait is a margin, not a guess).
SWEEP_ROUNDS = 6
ORPHAN_AFTER = 15


@dataclass(frozen=True)
class Reclaim:
    user: str
    reason: str  # for the user: why their lab was stopped


def _since(lab: Lab) -> float | None:
    try:
        return parse_time(lab.since).timestamp()
    except (TypeError, ValueError):
        return None


def _sample_of(device: str, samples: dict) -> dict | None:
    for gpu in samples.get("gpus", []):
        if device in (gpu.get("uuid"), gpu.get("index")):
            return gpu
    return None


def decide(labs: list[Lab], samples: dict | None, *, idle_below: int, idle_timeout: int,
           idle_timeout_waiting: int, waiting: bool, max_ages: dict[str, int],
           now: float) -> list[Reclaim]:
    """Which labs to stop now, and why. Pure: the service gathers the inputs."""
    timeout = idle_timeout  # 0: never, in line or not
    if waiting and idle_timeout and idle_timeout_waiting:
        timeout = min(idle_timeout, idle_timeout_waiting)
    found = []
    for lab in labs:
        started = _since(lab)
        limit = max_ages.get(lab.profile)
        if limit and started is not None and now - started >= limit:
            found.append(Reclaim(lab.user, f"it reached the {duration(limit)} time limit of "
                                           f"its profile ({lab.profile}); your files are kept"))
            continue
        if not (lab.gpus and timeout and samples and started is not None):
            continue
        idle_for = []
        for device in lab.gpus:
            gpu = _sample_of(device, samples)
            util = gpu.get("utilisation") if gpu else None
            if gpu is None or util is None or util >= idle_below or gpu.get("idle_since") is None:
                break
            idle_for.append(now - max(gpu["idle_since"], started))
        else:
            if idle_for and min(idle_for) >= timeout:
                while_waiting = " while others waited for one" if timeout != idle_timeout else ""
                found.append(Reclaim(lab.user, (
                    f"its GPUs were idle (under {idle_below} % busy) for "
                    f"{duration(int(min(idle_for)))}{while_waiting}; your files are kept")))
    return found


def orphans(containers: list[dict], user_exists: Callable[[str], bool],
            now: float) -> list[tuple[str, str]]:
    """(container ID, user) of the lab containers whose user the hub does not have.

    Only containers older than ORPHAN_AFTER are asked about; ``user_exists`` raising (the
    hub not answering) keeps the container: a lab is never removed on a guess.
    """
    found = []
    for c in containers:
        user, created = (c.get("Labels") or {}).get(LABEL_USER, ""), c.get("Created")
        if not user or not isinstance(created, int | float) or now - created < ORPHAN_AFTER:
            continue
        if not user_exists(user):
            found.append((c["Id"], user))
    return found


class ContainerLabs:
    """Compose mode: labs are containers on this Docker host."""

    kind = "lab container"
    reclaims_idle_gpus = True

    def __init__(self, client, project: str):
        self.client, self.filters = client, {"label": f"{LABEL_PROJECT}={project}"}

    def running(self) -> list[dict]:
        return self.client.api.containers(filters=self.filters)

    def every(self) -> list[dict]:
        """Every lab, running or not: Id, Labels, Created (seconds since the epoch)."""
        return self.client.api.containers(all=True, filters=self.filters)

    def remove(self, ident: str) -> None:
        self.client.api.remove_container(ident, force=True)


class ServiceLabs:
    """Swarm mode: labs are Swarm services, whose tasks run on any node."""

    kind = "lab service"
    reclaims_idle_gpus = False

    def __init__(self, client, project: str):
        self.client, self.filters = client, {"label": f"{LABEL_PROJECT}={project}"}

    def running(self) -> list[dict]:
        return []  # not asked: no idle GPUs to tell (reclaims_idle_gpus)

    def every(self) -> list[dict]:
        found = []
        for service in self.client.api.services(filters=self.filters):
            try:
                created = parse_time(_seconds_precision(service["CreatedAt"])).timestamp()
            except (KeyError, TypeError, ValueError):
                continue  # an age it cannot read: never removed on a guess
            found.append({"Id": service["ID"], "Created": created,
                          "Labels": (service.get("Spec") or {}).get("Labels") or {}})
        return found

    def remove(self, ident: str) -> None:
        self.client.api.remove_service(ident)


def _seconds_precision(stamp: str) -> str:
    """Docker's ``2026-12-05T19:20:48.263757858Z`` as ``2026-12-05T19:20:48+00:00``."""
    return stamp.partition(".")[0].removesuffix("Z") + "+00:00"


def labs_of(settings, client) -> ContainerLabs | ServiceLabs:
    """The labs of ``settings``' mode, as the reclaimer sees them."""
    kind = ServiceLabs if settings.mode == "swarm" else ContainerLabs
    return kind(client, settings.compose_project_name)


def _profiles_max_ages(path: Path) -> dict[str, int]:
    from gpuhub.core.profiles import Profiles

    if not path.exists():
        return {}
    return {p.slug: p.max_age for p in Profiles.from_file(path).profiles if p.max_age}


def main() -> None:  # the service's loop; its decisions are tested in decide() and orphans()
    import docker
    import requests

    from gpuhub.core.samples import read_samples
    from gpuhub.core.settings import SettingsError, validate

    try:
        settings = validate(os.environ)
    except SettingsError as err:
        sys.exit(f"gpu-reclaimer: {err}")
    api, token = os.environ["JUPYTERHUB_API_URL"], os.environ["JUPYTERHUB_API_TOKEN"]
    max_ages = _profiles_max_ages(Path(names.HUB_PROFILES_PATH))
    line_file = Path(names.HUB_DATA_DIR) / names.GPU_LINE_FILE
    labs_here = labs_of(settings, docker.from_env(timeout=10))
    asked: dict[str, float] = {}
    swept = 0.0

    def user_exists(user: str) -> bool:
        answer = requests.get(f"{api}/users/{user}", timeout=30,
                              headers={"Authorization": f"token {token}"})
        if answer.status_code not in (200, 404):
            answer.raise_for_status()
            raise RuntimeError(f"the hub answered {answer.status_code} for {user}")
        return answer.status_code == 200

    def stop_idle_labs(containers: list[dict], now: float) -> None:
        try:
            waiting = bool(json.loads(line_file.read_text()))
        except (OSError, ValueError):
            waiting = False
        samples, _ = read_samples(now=now)
        labs = [Lab.from_labels(c["Id"], c.get("Labels") or {}) for c in containers]
        for todo in decide(labs, samples, idle_below=settings.gpu_idle_utilisation,
                           idle_timeout=settings.gpu_idle_timeout,
                           idle_timeout_waiting=settings.gpu_idle_timeout_while_waiting,
                           waiting=waiting, max_ages=max_ages, now=now):
            if now - asked.get(todo.user, 0) < ASKED_AGAIN_AFTER:
                continue
            asked[todo.user] = now
            leave_reason(todo.user, todo.reason)
            answer = requests.delete(f"{api}/users/{todo.user}/server", timeout=30,
                                     headers={"Authorization": f"token {token}"})
            print(f"gpu-reclaimer: stopping the lab of {todo.user}: {todo.reason} "
                  f"(HTTP {answer.status_code})", flush=True)

    if labs_here.reclaims_idle_gpus:
        print(f"gpu-reclaimer: GPU labs idle {settings.gpu_idle_timeout} s "
              f"({settings.gpu_idle_timeout_while_waiting} s while others wait) under "
              f"{settings.gpu_idle_utilisation} %, profiles' max_age {max_ages or 'none'}",
              flush=True)
    else:
        print("gpu-reclaimer: swarm mode: removes only lab services of users the hub no "
              "longer has", flush=True)
    while True:
        time.sleep(settings.gpu_sample_interval)
        now = time.time()
        try:
            if labs_here.reclaims_idle_gpus:
                stop_idle_labs(labs_here.running(), now)
            if now - swept >= SWEEP_ROUNDS * settings.gpu_sample_interval:
                swept = now
                for lab, user in orphans(labs_here.every(), user_exists, now):
                    labs_here.remove(lab)
                    print(f"gpu-reclaimer: removed the {labs_here.kind} {lab[:12]} of {user}, "
                          "whom the hub no longer has", flush=True)
        except Exception as err:  # Docker or the hub away for a moment: next round
            print(f"gpu-reclaimer: this round failed: {err}", flush=True)


if __name__ == "__main__":
    main()
