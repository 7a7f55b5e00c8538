"""The pinned versions of every Python package gpuhub installs (``constraints.txt``, read).

``constraints.txt`` sits next to this module, so it is in every image that has the package.
Standard library only, and runnable as a script (``python3 -I versions.py constraints
jupyterhub=5.5.3``): the image builds use it before the package is installed, to get the
constraints with JUPYTERHUB_VERSION's JupyterHub in place of the pin.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().with_name("constraints.txt")

# A pin as pip reads it: name==version, then an optional comment. The comment may start
# with a version range (`# <6: why`) that holds `tools.constraints refresh` inside it.
_PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)"
                  r"(?:\s+#\s*(?P<comment>.*))?")
_HOLD = re.compile(r"(?P<spec>(?:[<>!~=]=?\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)+):")


def canonical(name: str) -> str:
    """PEP 503's normal form: ``PyYAML``, ``pyyaml`` and ``py_yaml`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str  # as written in the file
    version: str
    hold: str = ""  # the version range refresh stays inside ("<6"), or ""
    comment: str = ""

    def line(self) -> str:
        return f"{self.name}=={self.version}" + (f"  # {self.comment}" if self.comment else "")


def parse_line(line: str, where: str = "constraints.txt") -> Pin | None:
    """The pin on one line of the file; None for a blank or comment line."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    found = _PIN.fullmatch(text)
    if not found:
        raise ValueError(f"{where}: expected NAME==VERSION [# comment], got {text!r}")
    comment = (found["comment"] or "").strip()
    hold = _HOLD.match(comment)
    return Pin(found["name"], found["version"],
               hold["spec"].strip().rstrip(",").replace(" ", "") if hold else "", comment)


def read(path: Path = CONSTRAINTS) -> dict[str, Pin]:
    """Every pin of the file, by canonical name; a name pinned twice is an error."""
    pins: dict[str, Pin] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        pin = parse_line(line, f"{path.name}:{number}")
        if pin is None:
            continue
        key = canonical(pin.name)
        if key in pins:
            raise ValueError(f"{path.name}:{number}: {pin.name} is pinned twice; keep one line")
        pins[key] = pin
    return pins


def pinned(name: str, path: Path = CONSTRAINTS) -> str:
    """The version ``constraints.txt`` pins for ``name``."""
    try:
        return read(path)[canonical(name)].version
    except KeyError:
        raise ValueError(f"{path.name} pins no version of {name}; add a {name}==VERSION "
                         "line") from None


def with_versions(text: str, versions: dict[str, str]) -> str:
    """The file's text with some pins set to other versions (an empty version keeps the pin).

    Everything else, comments and order included, stays as it is.
    """
    wanted = {canonical(name): version for name, version in versions.items() if version}
    seen: set[str] = set()
    lines = []
    for line in text.splitlines():
        pin = parse_line(line)
        if pin is not None and canonical(pin.name) in wanted:
            seen.add(canonical(pin.name))
            line = Pin(pin.name, wanted[canonical(pin.name)], pin.hold, pin.comment).line()
        lines.append(line)
    missing = sorted(set(wanted) - seen)
    if missing:
        raise ValueError(f"constraints.txt pins no version of {', '.join(missing)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """``versions.py constraints [NAME=VERSION ...]``: print the constraints, so changed."""
    if not argv or argv[0] != "constraints" or not all("=" in a for a in argv[1:]):
        print("usage: versions.py constraints [NAME=VERSION ...]  (an empty VERSION keeps "
              "the pin)", file=sys.stderr)
        return 2
    try:
        sys.stdout.write(with_versions(CONSTRAINTS.read_text(),
                                       dict(a.split("=", 1) for a in argv[1:])))
    except ValueError as err:
        print(f"versions.py: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
