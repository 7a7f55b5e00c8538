"""The hub's work-folder page at /hub/work-folders (admins only): each user's use of their
work folder and its quota (WORK_QUOTA), fullest first, in the hub's own page layout.

The figures are the broker's report as the hub last fetched it
(``telemetry.installed().work_use``, gpuhub.hub.workfolders); without a quota the page
says so. ``?format=json`` gives the same rows as JSON.
"""

from __future__ import annotations

import json

from jupyterhub.handlers import BaseHandler
from tornado import web

from gpuhub.core import workuse
from gpuhub.hub import telemetry

PATH = "/work-folders"


def rows(report: dict[str, workuse.FolderUse]) -> list[dict]:
    """The page's rows: user (as escaped in names), bytes used, limit, share, fullest first."""
    found = [{"user": name, "used": use.used, "limit": use.limit,
              "percent": round(100 * use.used / use.limit) if use.limit else None,
              "text": workuse.text(use), "full": use.full}
             for name, use in report.items()]
    return sorted(found, key=lambda r: (-(r["percent"] or 0), r["user"]))


class WorkFolderPage(BaseHandler):
    @web.authenticated
    async def get(self):
        if not self.current_user.admin:
            raise web.HTTPError(403, "the work-folder page is for hub admins")
        use = telemetry.installed().work_use
        if use is not None:
            use.latest()  # a stale report starts its refresh
        table = rows(use.report) if use is not None else []
        self.set_header("Cache-Control", "no-store")
        if self.get_argument("format", "") == "json":
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"quota": use is not None, "folders": table,
                                    "problem": use.problem if use is not None else ""}))
            return
        html = await self.render_template("workfolders.html", quota=use is not None,
                                          folders=table,
                                          problem=use.problem if use is not None else "")
        self.finish(html)
