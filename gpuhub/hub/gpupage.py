"""The hub's GPU page at /hub/gpus (admins only), in the hub's own page layout.

It is a hub handler, not a service, because only the hub can render its own pages
(navigation bar, login, look) around a table: JupyterHub marks ``extra_handlers`` as
deprecated in favour of services, but keeps them through 5.x, which gpuhub pins;
``tests/integration/test_gpu_telemetry.py`` notices if an upgrade breaks the page.
The table comes from the hub's :class:`gpuhub.hub.telemetry.GpuBoard` (``telemetry.installed().board``); ``?format=json`` gives
the same as JSON, which the page's script fetches to refresh itself. Its Stop buttons
call the hub's REST API from the browser, with the admin's own session and rights.
"""

from __future__ import annotations

import asyncio
import json

from jupyterhub.handlers import BaseHandler
from tornado import web

from gpuhub.hub import telemetry

PATH = "/gpus"


def script_json(value) -> str:
    """JSON safe inside a <script> element (no "</script>" can end it early)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "&", "\\u0026")


class GpuPage(BaseHandler):
    @web.authenticated
    async def get(self):
        if not self.current_user.admin:
            raise web.HTTPError(403, "the GPU page is for hub admins")
        gpus = telemetry.installed().board
        board = await asyncio.get_running_loop().run_in_executor(None, gpus.latest)
        self.set_header("Cache-Control", "no-store")
        if self.get_argument("format", "") == "json":
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(board.as_json()))
            return
        html = await self.render_template("gpus.html", board_json=script_json(board.as_json()),
                                          refresh_seconds=max(2, gpus.interval))
        self.finish(html)


handlers = [(PATH, GpuPage)]
