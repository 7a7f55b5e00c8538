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

from tornado import web

from gpuhub.hub import telemetry
from gpuhub.hub.adminpage import AdminPage

PATH = "/gpus"


def script_json(value) -> str:
    """JSON safe inside a <script> element (no "</script>" can end it early)."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace(
        "&", "\\u0026")


class GpuPage(AdminPage):
    what = "the GPU page"

    @web.authenticated
    async def get(self):
        self.require_admin()
        gpus = telemetry.installed().board
        board = await asyncio.get_running_loop().run_in_executor(None, gpus.latest)
        await self.answer(board.as_json(), "gpus.html", board_json=script_json(board.as_json()),
                          refresh_seconds=max(2, gpus.interval))


handlers = [(PATH, GpuPage)]
