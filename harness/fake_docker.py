"""A recording fake Docker daemon on a Unix socket, and the broker in front of it.

The broker's unit tests and its micro-benchmark send requests to a real broker (aiohttp,
on loopback) whose Docker is this fake: it records every request that reaches it, so a
test can assert on what Docker would have been asked, not on what the broker answered.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gpuhub.broker.policy import Policy
from gpuhub.broker.server import Broker

PROJECT = "gpuhub"
LAB_IMAGE = "gpuhub-lab:latest"
GPUS = ("GPU-aaaa", "GPU-bbbb")
SHARED = "/srv/shared-data"


def policy() -> Policy:
    return Policy(project=PROJECT, images=frozenset({LAB_IMAGE, "quay.io/x/other:1"}),
                  gpu_ids=frozenset(GPUS), shared_dir=SHARED, pids_limit=1024)


def lab_info(name: str, user: str, **host) -> dict:
    """What Docker's inspect shows for a lab the broker created."""
    return {"Id": f"id-{name}", "Name": f"/{name}",
            "Config": {"Labels": {"gpuhub.project": PROJECT, "gpuhub.user": user,
                                  "gpuhub.gpus": ""}},
            "HostConfig": {"NetworkMode": f"{PROJECT}-labs", "CapDrop": ["ALL"],
                           "SecurityOpt": ["no-new-privileges"], "PidsLimit": 1024,
                           "Binds": [f"{PROJECT}-home-{user}:/home/jovyan/work:rw"],
                           "Privileged": False, "IpcMode": "private", **host},
            "Mounts": [{"Type": "volume", "Name": f"{PROJECT}-home-{user}"}],
            "State": {"Running": False}}


def service_info(service: str, project: str = PROJECT) -> dict:
    return {"Id": f"id-{service}", "Name": f"/{project}-{service}-1",
            "Config": {"Labels": {"com.docker.compose.project": project,
                                  "com.docker.compose.service": service}},
            "HostConfig": {"NetworkMode": "bridge", "Privileged": False}}


CONTAINERS = {
    f"{PROJECT}-lab-bob": lab_info(f"{PROJECT}-lab-bob", "bob"),
    # Named like a lab, but made by hand outside the broker: privileged.
    f"{PROJECT}-lab-evil": lab_info(f"{PROJECT}-lab-evil", "evil", Privileged=True),
    "hub": service_info("hub"),
    "lab-firewall": service_info("lab-firewall"),
    "elsewhere": service_info("db", project="another"),
}


@dataclass
class FakeDocker:
    """Records (method, path with query, body) of every request; answers like Docker."""

    calls: list[tuple[str, str, bytes]] = field(default_factory=list)

    @property
    def changes(self) -> list[tuple[str, str, bytes]]:
        """Every request that would change something (anything but GET and HEAD)."""
        return [c for c in self.calls if c[0] not in ("GET", "HEAD")]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append((request.method, request.raw_path, body))
        path = request.path
        if path.startswith("/v1."):
            path = "/" + path.split("/", 2)[2]
        parts = path.strip("/").split("/")
        if path == "/_ping":
            return web.Response(text="OK")
        if path == "/version":
            return web.json_response({"ApiVersion": "1.41", "Version": "20.10.24"})
        if path == "/containers/json":
            return web.json_response([{"Id": i["Id"], "Names": [i["Name"]],
                                       "Labels": i["Config"]["Labels"]}
                                      for i in CONTAINERS.values()])
        if path == "/containers/create":
            return web.json_response({"Id": "id-new", "Warnings": []}, status=201)
        if parts[0] == "containers" and len(parts) >= 2:
            info = CONTAINERS.get(parts[1]) or next(
                (i for i in CONTAINERS.values() if i["Id"] == parts[1]), None)
            if info is None:
                return web.json_response({"message": f"No such container: {parts[1]}"},
                                         status=404)
            if request.method == "GET":
                return web.json_response(info)
            return web.Response(status=204)
        if parts[0] == "volumes":
            if request.method == "DELETE":
                return web.Response(status=204)
            return web.json_response({"Name": parts[1]})
        if parts[0] == "images":
            return web.json_response({"Id": "sha256:1"})
        return web.json_response({"message": "the fake has no such call"}, status=404)


class BrokerHarness:
    """The broker and a FakeDocker, served by an event loop in a thread of their own."""

    def __init__(self, workdir: Path, policy: Policy | None = None,
                 broker_class: type[Broker] = Broker):
        self.broker_class = broker_class
        self.socket = str(workdir / "docker.sock")
        self.docker = FakeDocker()
        self.policy = policy or globals()["policy"]()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> BrokerHarness:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the broker harness did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        fake = web.AppRunner(self.docker.app())
        await fake.setup()
        await web.UnixSite(fake, self.socket).start()
        broker = web.AppRunner(self.broker_class(self.policy, self.socket).app(),
                               access_log=None)
        await broker.setup()
        site = web.TCPSite(broker, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        await broker.cleanup()
        await fake.cleanup()

    def request(self, method: str, target: str, body: bytes | str | dict | None = None,
                headers: dict | None = None) -> tuple[int, dict | str]:
        """Send one request to the broker; (status, decoded JSON answer or text)."""
        import http.client

        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            all_headers = {"Content-Type": "application/json", **(headers or {})}
            if body is not None and "Transfer-Encoding" not in all_headers:
                all_headers["Content-Length"] = str(len(body))
            for key, value in all_headers.items():
                conn.putheader(key, value)
            conn.endheaders(body)
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        try:
            return answer.status, json.loads(data)
        except ValueError:
            return answer.status, data.decode(errors="replace")
