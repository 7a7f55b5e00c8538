"""`invoke usage`: GPU-hours and lab-hours per user and per profile, from the hub's records.

The records (``usage.jsonl``) are on the hub-data volume; ``gpuhub.core.usage`` reads them
inside the running hub container, so the report is the hub's own view.
"""

from __future__ import annotations

import shlex
import sys
from datetime import UTC, datetime

from invoke import task

from gpuhub.core.usage import SINCE_FORMS, parse_since
from gpuhub.tasks.deployment import fail, require_running
from gpuhub.tasks.project import load

USAGE_CLI = "python3 -m gpuhub.core.usage report"


def report_command(since: str | None, csv: bool) -> str:
    """The command line run in the hub container."""
    args = USAGE_CLI
    if since is not None:
        args += f" --since {shlex.quote(since)}"
    if csv:
        args += " --csv"
    return args


@task(help={"since": f"Count only from then on: {SINCE_FORMS} (default: every record).",
            "csv": "Print CSV instead of tables: a header, then one row per user and per "
                   "profile, its column `by` saying which."})
def usage(c, since=None, csv=False):
    """Show labs, lab-hours and GPU-hours per user and per profile."""
    project = load()
    if since is not None:  # a typo stops here, before Docker is asked anything
        try:
            parse_since(since, datetime.now(UTC))
        except ValueError as err:
            raise fail(str(err)) from None
    require_running(c, project)
    result = c.run(project.exec_hub(report_command(since, csv)), env=project.env(),
                   hide=True, warn=True, in_stream=False)
    if result.failed:
        lines = [ln for ln in (result.stderr or "").strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {result.return_code}"
        if "No module named gpuhub.core.usage" in last:
            raise fail("the running hub predates `invoke usage`; rebuild and restart it "
                       "with `invoke up`")
        raise fail(last.removeprefix("error: ")[-300:])
    sys.stderr.write(result.stderr or "")  # notes: no records yet, lines skipped
    sys.stdout.write(result.stdout)
