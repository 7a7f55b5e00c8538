"""The hub's work-folder page at /hub/work-folders (admins only): each user's use of their
work folder and its quota (WORK_QUOTA), fullest first, in the hub's own page layout.

The figures are the broker's report as the hub last fetched it
(``telemetry.installed().work_use``, gpuhub.hub.workfolders); without a quota the page
says so. ``?format=json`` gives the same rows as JSON.
"""

from __future__ import annotations

from tornado import web

from gpuhub.core import workuse
from gpuhub.hub import telemetry
from gpuhub.hub.adminpage import AdminPage

PATH = "/work-folders"


def rows(report: dict[str, workuse.FolderUse]) -> list[dict]:
    """The page's rows: user (as escaped in names), bytes used, limit, share, fullest first."""
    found = [{"user": name, "used": use.used, "limit": use.limit,
              "percent": round(100 * use.used / use.limit) if use.limit else None,
              "text": workuse.text(use), "full": use.full}
             for name, use in report.items()]
    return sorted(found, key=lambda r: (-(r["percent"] or 0), r["user"]))


class WorkFolderPage(AdminPage):
    what = "the work-folder page"

    @web.authenticated
    async def get(self):
        self.require_admin()
        use = telemetry.installed().work_use
        if use is not None:
            use.latest()  # a stale report starts its refresh
        data = {"quota": use is not None, "folders": rows(use.report) if use is not None else [],
                "problem": use.problem if use is not None else ""}
        await self.answer(data, "workfolders.html", **data)
