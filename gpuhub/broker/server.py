"""The Docker broker: the only holder of the Docker socket, and the hub's only way to it.

Runs as the ``docker-proxy`` compose service (``python3 -m gpuhub.broker``), on the
internal ``docker-api`` network it shares with the hub alone. aiohttp parses each HTTP
request and reads its body whole (at most ``MAX_BODY``); :class:`~gpuhub.broker.policy.Policy`
decides what to send Docker, and the broker sends that, never the hub's bytes, over its
own connection to the socket. Whatever goes wrong (a refusal, a bug, Docker not
answering) ends in an error answer: nothing is sent on unchecked.

The settings are the stack's own (the same ``.env``, profiles and GPU inventory the hub
gets), so the images, GPUs, shared folder and PIDs limit it allows are the hub's.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, UnixConnector, web
from yarl import URL

from gpuhub.broker.policy import MAX_BODY, REFUSED, Call, Plan, Policy, Refused
from gpuhub.broker.workfolders import WorkFolderError, WorkFolders
from gpuhub.core import gpus as gpu_inventory
from gpuhub.core import lablimits
from gpuhub.core.names import (
    BROKER_DATA_DIR,
    DOCKER_BROKER_PORT,
    DOCKER_SOCKET_MOUNT,
    HUB_PROFILES_PATH,
    LABS_CGROUP_PARENT_ENV,
)

SOCKET = DOCKER_SOCKET_MOUNT
PROFILES_PATH = Path(HUB_PROFILES_PATH)  # where compose mounts PROFILES_FILE
MAX_ANSWER = 32 * 1024 * 1024  # a container list of a busy host is well under this
# `docker stop` waits for the lab to exit: DockerSpawner allows 10 s, an admin may set more.
DOCKER_TIMEOUT = ClientTimeout(total=660, connect=10)
_PASSED_HEADERS = ("Content-Type", "Api-Version", "Docker-Experimental", "Ostype")

log = logging.getLogger("gpuhub.broker.server")


def policy_from_env(env: Mapping[str, str], profiles_path: Path = PROFILES_PATH,
                    data_dir: Path | None = None) -> tuple[Policy, str]:
    """The stack's policy from its settings, and WORK_ROOT; raises ValueError (or
    SettingsError) saying what.

    ``data_dir``: where the broker keeps the GPU inventory it was last given (its own
    broker-data volume, which no other service mounts), for a start without one (compose
    run by hand); None: the inventory given, or none.
    """
    from gpuhub.core.profiles import Profiles
    from gpuhub.core.settings import validate

    settings = validate(env)
    images = [settings.lab_image]
    if profiles_path.exists():
        images = Profiles.from_file(profiles_path).images(settings.lab_image)
    given = env.get("GPUHUB_GPU_INVENTORY") or ""
    inventory = (gpu_inventory.from_json(given) if data_dir is None
                 else gpu_inventory.remembered(given, data_dir / gpu_inventory.INVENTORY_FILE))
    return Policy(project=settings.compose_project_name, images=frozenset(images),
                  gpu_ids=frozenset(g.device_id for g in inventory),
                  shared_dir=settings.shared_data_dir or "",
                  pids_limit=settings.lab_pids_limit,
                  labs_cgroup_parent=env.get(LABS_CGROUP_PARENT_ENV) or "",
                  tmp_options=lablimits.lab_tmp(settings.lab_tmp_size).get(lablimits.TMP_PATH, ""),
                  work_quota=lablimits.optional_bytes(settings.work_quota),
                  disk_limit=lablimits.lab_disk_limit(env)), settings.work_root or ""


def _refusal(err: Refused) -> web.Response:
    return web.json_response({"message": str(err)}, status=err.status)


class Broker:
    """The aiohttp application around one policy and one Docker socket."""

    def __init__(self, policy: Policy, socket: str = SOCKET, work_root: str = ""):
        self.policy, self.socket = policy, socket
        self._session: ClientSession | None = None
        self.work = (WorkFolders(policy.project, work_root, policy.work_quota, self.docker)
                     if policy.work_quota else None)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        app.on_startup.append(self._check_work_root)
        app.on_cleanup.append(self._close)
        return app

    async def _check_work_root(self, _app) -> None:
        if self.work is None:
            return
        try:
            await self.work.check_root()
        except WorkFolderError as err:  # each lab's create will be refused with the same
            log.error("WORK_QUOTA: %s; labs cannot start", err)
        else:
            log.info("WORK_QUOTA: work folders in %s, at most %d bytes each",
                     self.work.root, self.work.quota)

    @property
    def session(self) -> ClientSession:
        if self._session is None:
            self._session = ClientSession(connector=UnixConnector(path=self.socket),
                                          timeout=DOCKER_TIMEOUT, auto_decompress=False)
        return self._session

    async def _close(self, _app) -> None:
        if self._session is not None:
            await self._session.close()

    async def docker(self, method: str, path: str, body: bytes | None = None):
        """One call to Docker: (status, headers, body), the body read whole."""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        async with self.session.request(method, URL("http://docker" + path, encoded=True),
                                        data=body, headers=headers) as answer:
            data = bytearray()
            async for chunk in answer.content.iter_chunked(64 * 1024):
                data += chunk
                if len(data) > MAX_ANSWER:
                    raise RuntimeError(f"Docker's answer to {method} {path} is over "
                                       f"{MAX_ANSWER} bytes")
            return answer.status, answer.headers, bytes(data)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        target = request.raw_path
        try:
            body = await request.read()
            plan = self.policy.plan(Call(request.method, target, body))
            response = await self.carry_out(plan)
        except Refused as err:
            response = _refusal(err)
            log.warning("%s %s refused: %s", request.method, target, err)
        except web.HTTPException as err:  # aiohttp's own: a body over the size limit
            response = web.json_response({"message": f"{REFUSED}: {err.reason}"},
                                         status=err.status)
        except (TimeoutError, OSError) as err:
            response = web.json_response({"message": f"gpuhub docker-proxy: Docker did not "
                                                     f"answer ({err.__class__.__name__})"},
                                         status=502)
        except Exception:  # fail closed: a bug refuses, it never lets a request through
            log.exception("%s %s: internal error", request.method, target)
            response = web.json_response({"message": f"{REFUSED}: internal error (see its log)"},
                                         status=403)
        if not (request.remote == "127.0.0.1" and target == "/_ping"):
            log.info("%s %s %s -> %d %.1f ms", request.remote, request.method, target,
                     response.status, (time.monotonic() - started) * 1000)
        return response

    async def carry_out(self, plan: Plan) -> web.Response:
        path = plan.path
        if plan.local == "work-folders" and self.work is not None:
            try:
                use = await self.work.use()
            except (WorkFolderError, ValueError) as err:
                return web.json_response({"message": f"gpuhub docker-proxy: {err}"}, status=502)
            return web.json_response({"quota": self.work.quota, "folders": {
                suffix: {"used": u.used, "limit": u.limit} for suffix, u in use.items()}})
        if plan.local is not None:
            raise Refused(plan.path, "not answered here")
        if plan.work_folder is not None:
            if self.work is None or plan.image is None:
                raise Refused("work folder", "no WORK_QUOTA keeper in this broker")
            try:
                await self.work.ensure(plan.work_folder, plan.image)
            except WorkFolderError as err:
                raise Refused("work folder", str(err), status=507) from None
        if plan.lab is not None:
            status, headers, data = await self.docker("GET", f"/containers/{plan.lab}/json")
            if status != 200:
                return self._answer(status, headers, data)
            info = json.loads(data)
            if self.policy.lab_of(info) is None:
                raise Refused("container", f"{plan.lab!r} is not a lab of {self.policy.project}")
            if plan.check_recorded:
                problems = self.policy.hardening_problems(info)
                if problems:
                    raise Refused("container", "its recorded settings break the lab hardening: "
                                               + "; ".join(problems))
            if plan.method == "GET":
                return self._answer(status, headers, data)
            path = path.replace("{id}", info["Id"])
        status, headers, data = await self.docker(plan.method, path, plan.body)
        if plan.removes_work_folder is not None and status == 204 and self.work is not None:
            try:
                await self.work.remove(plan.removes_work_folder)
            except WorkFolderError as err:
                return web.json_response({"message": f"gpuhub docker-proxy: the work volume "
                                                     f"is removed, its folder is not: {err}"},
                                         status=500)
        if plan.only_project and status == 200:
            listed = json.loads(data)
            if not isinstance(listed, list):
                raise RuntimeError("Docker's container list is not a list")
            data = json.dumps([c for c in listed if self.policy.is_project_container(c)]).encode()
        return self._answer(status, headers, data)

    @staticmethod
    def _answer(status: int, headers, data: bytes) -> web.Response:
        passed = {k: headers[k] for k in _PASSED_HEADERS if k in headers}
        return web.Response(status=status, body=data if status not in (204, 304) else None,
                            headers=passed)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="docker-proxy: %(message)s", stream=sys.stdout)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        policy, work_root = policy_from_env(os.environ, data_dir=Path(BROKER_DATA_DIR))
    except (ValueError, OSError) as err:
        print(f"docker-proxy: error: {err}; start the stack with `invoke up`", file=sys.stderr)
        return 2
    remembered = (" (as last given; none was given now)" if policy.gpu_ids
                  and not os.environ.get("GPUHUB_GPU_INVENTORY") else "")
    log.info("project %s: labs from %s; GPUs %s%s; shared folder %s; PIDs limit %d",
             policy.project, ", ".join(sorted(policy.images)),
             ", ".join(sorted(policy.gpu_ids)) or "none (GPU labs are refused)", remembered,
             policy.shared_dir or "none", policy.pids_limit)
    web.run_app(Broker(policy, work_root=work_root).app(), port=DOCKER_BROKER_PORT, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
