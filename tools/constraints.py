"""Refresh gpuhub/core/constraints.txt: every pin to the newest release, in one command.

    python -m tools.constraints refresh [--dry-run]

pip resolves all the pinned packages together (so the new pins agree with each other),
each inside the version range its comment holds it to (``# <6: why``). The file keeps its
comments and order; only versions change. What is generated from the pins is written again
too: ``.env.example`` (JUPYTERHUB_VERSION's default and HUB_BASE_IMAGE follow the JupyterHub
pin; the documentation's settings reference is generated from the same settings at every
build, by tools/docsref.py). Then: read the changelogs of what moved, run
``nox -s unit``, build the images, and ``nox -s audit``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from gpuhub.core.versions import CONSTRAINTS, Pin, canonical, read, with_versions
from gpuhub.tasks.project import ROOT

ENV_EXAMPLE = ROOT / ".env.example"

Runner = Callable[[list[str]], subprocess.CompletedProcess]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def resolve(requirements: list[str], runner: Runner = run, deps: bool = True) -> dict[str, str]:
    """The versions pip would install for these requirements, by canonical name."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
           "--quiet", "--report", "-", *([] if deps else ["--no-deps"]), *requirements]
    result = runner(cmd)
    try:
        installs = json.loads(result.stdout)["install"]
        return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    except (ValueError, TypeError, KeyError):
        why = (result.stderr or "").strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        raise SystemExit(f"constraints: pip could not resolve the pins: {why[0]}") from None


def newest(pins: dict[str, Pin], runner: Runner = run) -> dict[str, str]:
    """The newest version of every pinned package, all resolved together within the holds."""
    resolved = resolve([f"{pin.name}{pin.hold}" for pin in pins.values()], runner)
    missing = [pin.name for key, pin in pins.items() if key not in resolved]
    if missing:
        raise SystemExit(f"constraints: pip resolved no version of {', '.join(missing)}")
    return {key: resolved[key] for key in pins}


def held_back(pins: dict[str, Pin], runner: Runner = run) -> list[str]:
    """A line for each hold that keeps a newer release out, with the hold's reason."""
    lines = []
    for key, pin in pins.items():
        if pin.hold:
            latest = resolve([pin.name], runner, deps=False).get(key)
            if latest and latest != pin.version:
                lines.append(f"held: {pin.name} {latest} is out; kept {pin.hold} "
                             f"({pin.comment.partition(':')[2].strip()})")
    return lines


def generated(runner: Runner = run) -> str:
    """``.env.example``, from the settings as they read the file now.

    In a new interpreter: this one may have imported gpuhub.core.settings before the rewrite.
    """
    result = runner([sys.executable, "-c", "import json; from gpuhub.core import settings; "
                     "print(json.dumps(settings.env_example()))"])
    if result.returncode != 0:
        raise SystemExit(f"constraints: cannot read the settings: {result.stderr.strip()}")
    return json.loads(result.stdout)


def refresh(dry_run: bool = False, runner: Runner = run, path: Path = CONSTRAINTS,
            env_example: Path = ENV_EXAMPLE) -> list[str]:
    """Move every pin to the newest release; the lines that say what changed."""
    pins = read(path)
    versions = newest(pins, runner)
    changes = [f"{pin.name} {pin.version} -> {versions[key]}"
               for key, pin in pins.items() if versions[key] != pin.version]
    changes += held_back(pins, runner)
    if dry_run or not any("->" in line for line in changes):
        return changes
    path.write_text(with_versions(path.read_text(), {p.name: versions[k] for k, p in pins.items()}))
    env_example.write_text(generated(runner))
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.constraints",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["refresh"])
    parser.add_argument("--dry-run", action="store_true",
                        help="only say what would change; write nothing")
    args = parser.parse_args(argv)
    changes = refresh(dry_run=args.dry_run)
    for line in changes or ["every pin is the newest release"]:
        print(line)
    if not args.dry_run and any("->" in line for line in changes):
        print(f"wrote {CONSTRAINTS.relative_to(ROOT)} and .env.example; now read the changelogs, run `nox -s unit`, build, and `nox -s audit`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
