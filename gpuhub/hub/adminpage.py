"""gpuhub's own hub pages for admins (the GPU page, the work-folder page): the admin check,
no caching, and the same data as JSON with ``?format=json``."""

from __future__ import annotations

import json

from jupyterhub.handlers import BaseHandler
from tornado import web


class AdminPage(BaseHandler):
    """A hub page for admins only, in the hub's own page layout."""

    what = "this page"  # for the refusal: "the GPU page is for hub admins"

    def require_admin(self) -> None:
        if not self.current_user.admin:
            raise web.HTTPError(403, f"{self.what} is for hub admins")

    async def answer(self, data: dict, template: str, **namespace) -> None:
        """``data`` as JSON for ``?format=json``, else ``template`` rendered with ``namespace``."""
        self.set_header("Cache-Control", "no-store")
        if self.get_argument("format", "") == "json":
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(data))
            return
        self.finish(await self.render_template(template, **namespace))
