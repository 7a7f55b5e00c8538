"""What the hub shows of the work folders' quota (WORK_QUOTA): each user's use as a metric,
a one-line note for a user whose folder is full, and the full folders on admins' pages.

The broker keeps the quotas and reports the use (gpuhub.core.workuse); :class:`WorkUse`
fetches that report in a thread at most every ``max_age`` seconds, so no page and no
scrape waits on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from prometheus_client.core import GaugeMetricFamily

from gpuhub.core import workuse
from gpuhub.core.settings import Settings

log = logging.getLogger("gpuhub.workfolders")
MAX_AGE = 30  # seconds


class WorkUse:
    """The latest work-folder report from the broker at ``docker_host``."""

    def __init__(self, docker_host: str, max_age: float = MAX_AGE, fetch=workuse.fetch):
        self.docker_host, self.max_age, self._fetch = docker_host, max_age, fetch
        self.report: dict[str, workuse.FolderUse] = {}
        self.fetched = 0.0  # monotonic time of the last report; 0: none yet
        self.problem = ""
        self._lock = threading.Lock()
        self._refreshing = False

    def refresh(self) -> None:
        try:
            report, problem = self._fetch(self.docker_host), ""
        except (OSError, ValueError) as err:
            report, problem = None, f"{type(err).__name__}: {err}"
        with self._lock:
            if report is not None:
                self.report, self.fetched = report, time.monotonic()
            elif problem != self.problem:
                log.warning("no work-folder report from docker-proxy: %s", problem)
            self.problem, self._refreshing = problem, False

    def latest(self) -> dict[str, workuse.FolderUse]:
        """The last report (maybe empty); a stale one is refreshed in the background."""
        with self._lock:
            stale = time.monotonic() - self.fetched > self.max_age
            start = stale and not self._refreshing
            if start:
                self._refreshing = True
        if start:
            threading.Thread(target=self.refresh, name="gpuhub-work-use", daemon=True).start()
        return self.report

    def note_for(self, user) -> str:
        """The template's ``gpuhub_work_folder_note``: for a user whose folder is full."""
        if user is None:
            return ""
        return workuse.full_note(workuse.of_user(self.latest(), user.name))

    def full_for_admin(self, user) -> str:
        """The template's ``gpuhub_full_work_folders``: for admins, who is full."""
        if user is None or not user.admin:
            return ""
        full = [f"{name} ({workuse.text(use)})" for name, use in sorted(self.latest().items())
                if use.full]
        return ("Work folders that are full (WORK_QUOTA): " + ", ".join(full)) if full else ""


class WorkFolderCollector:
    """gpuhub_work_folder_used_bytes and _limit_bytes, by user (the escaped name)."""

    def __init__(self, use: WorkUse):
        self.use = use

    def describe(self):
        return []

    def collect(self):
        used = GaugeMetricFamily("gpuhub_work_folder_used_bytes",
                                 "Bytes in each user's work folder (WORK_QUOTA).", labels=["user"])
        limit = GaugeMetricFamily("gpuhub_work_folder_limit_bytes",
                                  "Each user's work folder quota in bytes (WORK_QUOTA).",
                                  labels=["user"])
        for name, use in sorted(self.use.latest().items()):
            used.add_metric([name], use.used)
            limit.add_metric([name], use.limit)
        yield from (used, limit)


def work_use(settings: Settings, env: Mapping[str, str]) -> WorkUse | None:
    """The hub's WorkUse, or None when work folders have no quota."""
    if settings.work_quota == "none":
        return None
    return WorkUse(env.get("DOCKER_HOST", ""))


NOTE_VARS = ("gpuhub_work_folder_note", "gpuhub_full_work_folders")


def template_vars(use: WorkUse | None) -> dict:
    """The pages' work-folder lines: from ``use``, or always empty without a quota."""
    if use is None:
        return dict.fromkeys(NOTE_VARS, "")

    # Plain functions, not bound methods: JupyterHub deep-copies its config, and a function
    # is copied as itself (a method would copy ``use``, with its lock).
    def note(user) -> str:
        return use.note_for(user)

    def full(user) -> str:
        return use.full_for_admin(user)
    return dict(zip(NOTE_VARS, (note, full)))
