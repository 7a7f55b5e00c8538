"""Load the deployment: read and validate the settings file, and pick the mode's stack.

Every task starts with :func:`load`, so a bad setting stops before Docker is touched.
The one place that picks between the modes (``MODE``): the tasks then reach what differs
only through ``project.stack`` (the ``StackMode`` seam of ``gpuhub.tasks.deployment``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gpuhub.core.settings import SettingsError, read_env_file, validate
from gpuhub.tasks import composestack, swarmstack
from gpuhub.tasks.deployment import ROOT, Project, StackMode, fail

STACKS: dict[str, StackMode] = {"compose": composestack, "swarm": swarmstack}


def load(root: Path = ROOT, environ: Mapping[str, str] | None = None) -> Project:
    """Read and validate the settings file; exit with one clear line if it is wrong."""
    if environ is None:
        environ = os.environ
    env_file = Path(environ.get("GPUHUB_ENV_FILE") or root / ".env").resolve()
    if not env_file.exists() and env_file == (root / ".env").resolve():
        # First use: every setting documented, all at their defaults (commented out).
        example = root / ".env.example"
        text = example.read_text() if example.exists() else ""
        env_file.write_text("".join(
            ln if ln.startswith("#") or not ln.strip() else "# " + ln
            for ln in text.splitlines(keepends=True)))
        env_file.chmod(0o600)
    try:
        settings = validate(read_env_file(env_file))
    except SettingsError as err:
        raise fail(f"{env_file}: " + "; ".join(err.problems)) from None
    return Project(root=root, env_file=env_file, settings=settings,
                   stack=STACKS[settings.mode])
