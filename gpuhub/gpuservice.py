"""The hub's GPU admin page: a hub-managed service at /services/gpus/ (admins only).

Shows the same table as `invoke gpus` (``?format=json`` for JSON). Access goes through
the hub's OAuth; the page also asks the Hub API whether the visitor is an admin.
"""

from __future__ import annotations

import html
import json
import os
from urllib.parse import urlparse

import docker
import requests
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from jupyterhub.utils import url_path_join
from tornado import ioloop, web

from . import gpus as gpu_inventory
from . import swarm
from .gpureport import as_html, report
from .labels import PROJECT
from .settings import validate

SERVICE_NAME = "gpus"
SERVICE_PORT = 10101


def current_rows() -> list[dict]:
    settings = validate(os.environ)
    if settings.mode == "swarm":
        return swarm_rows(settings)
    containers = docker.from_env().containers.list(
        filters={"label": f"{PROJECT}={settings.compose_project_name}"})
    inventory = gpu_inventory.from_json(os.environ.get("GPUHUB_GPU_INVENTORY", ""))
    return report(inventory, [c.labels for c in containers], settings.gpu_policy)


def swarm_rows(settings) -> list[dict]:
    """Swarm mode: every node's GPUs and the running lab tasks holding them."""
    client = docker.from_env()
    kind = settings.swarm_gpu_resource
    tasks = []
    for service in client.api.services(filters={"label": f"{PROJECT}={settings.compose_project_name}"}):
        tasks += client.api.tasks(filters={"service": service["ID"], "desired-state": "running"})
    nodes = [n.attrs for n in client.nodes.list()]
    return swarm.report(swarm.node_gpus(nodes, kind), tasks, kind)


def swarm_html(rows: list[dict]) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("Node", "UUID", "Node state", "Held by", "Since"))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r["node"], r["uuid"], f"{r['state']}/{r['availability']}",
            ", ".join(r["held_by"]) or "free", r["since"] or "-")) + "</tr>"
        for r in rows)
    return (f'<table class="table" id="gpu-table"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body or '<tr><td colspan=5>No node advertises GPUs.</td></tr>'}"
            "</tbody></table>")


def is_admin(name: str) -> bool:
    api = os.environ["JUPYTERHUB_API_URL"]
    resp = requests.get(f"{api}/users/{name}", timeout=10,
                        headers={"Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}"})
    return resp.ok and bool(resp.json().get("admin"))


class GpuPage(HubOAuthenticated, web.RequestHandler):
    @web.authenticated
    def get(self):
        user = self.get_current_user()
        if not is_admin(user["name"]):
            raise web.HTTPError(403, "the GPU page is for hub admins")
        rows = current_rows()
        if self.get_argument("format", "") == "json":
            self.set_header("Content-Type", "application/json")
            self.write(json.dumps(rows))
            return
        self.write("<!doctype html><html><head><title>gpuhub GPUs</title></head><body>"
                   "<h1>GPUs</h1>" + (swarm_html(rows) if rows and "node" in rows[0]
                                      else as_html(rows)) + "</body></html>")


def main() -> None:
    prefix = os.environ["JUPYTERHUB_SERVICE_PREFIX"]
    app = web.Application([
        (prefix, GpuPage),
        (url_path_join(prefix, "oauth_callback"), HubOAuthCallbackHandler),
    ], cookie_secret=os.urandom(32))
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    app.listen(url.port, url.hostname)
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
