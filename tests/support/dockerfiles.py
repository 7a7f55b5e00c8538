"""gpuhub's Dockerfiles read as Docker reads them: instructions, base images, build args.

Enough of the Dockerfile syntax for gpuhub's own files: the default escape character and
no heredocs.
"""

from __future__ import annotations

import shlex
from pathlib import Path


def instructions(path: Path) -> list[tuple[str, str]]:
    """The instructions as (INSTRUCTION, arguments): continuations joined, comment and
    blank lines dropped (inside a continuation too), as Docker reads them."""
    steps, line = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        line += raw.rstrip() if line else raw.strip()  # a continued line keeps its indent
        if line.endswith("\\"):
            line = line[:-1]
            continue
        keyword, _, args = line.partition(" ")
        steps.append((keyword.upper(), args.strip()))
        line = ""
    if line:
        raise ValueError(f"{path}: ends inside a continued line: {line[:80]!r}")
    return steps


def global_args(path: Path) -> dict[str, str | None]:
    """The ARGs declared before the first FROM, the only ones a FROM line can use, each
    with its default (None when it has none). ``ARG A=1 B="two words"`` declares two."""
    found: dict[str, str | None] = {}
    for keyword, args in instructions(path):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            for word in shlex.split(args):
                name, equals, default = word.partition("=")
                if not name.isidentifier():
                    raise ValueError(f"{path}: ARG {args!r}: {name!r} is not a build arg name")
                found[name] = default if equals else None
    return found


def base_images(path: Path) -> list[str]:
    """What each FROM builds on, as written (``${BASE_IMAGE}`` stays unexpanded)."""
    images = []
    for keyword, args in instructions(path):
        if keyword == "FROM":
            words = [w for w in shlex.split(args) if not w.startswith("--")]  # --platform=
            images.append(words[0])
    return images
