"""Work folders with a quota (WORK_QUOTA): one btrfs subvolume per user under WORK_ROOT,
limited by a btrfs quota group, and the user's work volume bound to it.

The broker is the only maker of a lab, so it is where the quota is kept: before it sends
Docker a lab's create it makes sure that the work volume the lab mounts is the user's
subvolume with WORK_QUOTA as its limit (:meth:`WorkFolders.ensure`), and when the hub
removes a work volume (`invoke deluser --purge-data`) it removes the subvolume too. A
write past the limit fails in that lab with EDQUOT ("Disk quota exceeded"); nothing else
on the disk is touched.

A work volume made before WORK_QUOTA was set (or by `invoke restore`) is a plain Docker
volume: the first start after that moves its files into the subvolume (a helper container
of the lab's own image copies them, the plain volume is removed only after the copy
succeeded) and binds the volume to it. A folder that does not fit its quota stays where it
was, and the start is refused with the sizes and the fix.

btrfs-progs (Debian's ``btrfs``) does the filesystem work: its commands are run without a
shell, with arguments the broker built from checked names, and their tabular output is read
column by column; anything unexpected refuses (fail closed). The broker needs
CAP_SYS_ADMIN for quota groups (docker-compose.work-quota.yml), which adds nothing to what
the holder of the Docker socket can do already.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from gpuhub.core import names
from gpuhub.core.labels import WORK_MOVE as LABEL_WORK_MOVE

BTRFS = "btrfs"
BTRFS_TIMEOUT = 60  # seconds; a subvolume delete of a big folder is queued, not waited for
SUBVOLUME_INODE = 256  # the root directory of every btrfs subvolume has this inode number

log = logging.getLogger("gpuhub.broker.workfolders")

# (method, path, body) -> (status, headers, body): the broker's own call to Docker.
Docker = Callable[[str, str, "bytes | None"], Awaitable[tuple[int, object, bytes]]]


class WorkFolderError(Exception):
    """A work folder that cannot be made ready; ``str()`` says why and the fix."""


@dataclass(frozen=True)
class Use:
    """One work folder's use: bytes it holds (btrfs "referenced") and its limit (0: none)."""

    used: int
    limit: int


async def btrfs(*args: str) -> str:
    """Run ``btrfs args...``; its output, or WorkFolderError with what it said."""
    process = await asyncio.create_subprocess_exec(
        BTRFS, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), BTRFS_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise WorkFolderError(f"`btrfs {' '.join(args)}` did not finish in "
                              f"{BTRFS_TIMEOUT} s") from None
    if process.returncode != 0:
        said = (err or out).decode(errors="replace").strip().splitlines()
        raise WorkFolderError(f"`btrfs {' '.join(args)}` failed: "
                              f"{said[-1] if said else 'exit ' + str(process.returncode)}")
    return out.decode(errors="strict")


def parse_qgroups(text: str) -> dict[int, Use]:
    """``btrfs qgroup show --raw -re`` as {subvolume id: use}, level-0 groups only.

    Columns: qgroupid, referenced, exclusive, max referenced, max exclusive[, path]. A line
    that does not read so raises ValueError: a changed format refuses, it does not guess.
    """
    found: dict[int, Use] = {}
    lines = text.splitlines()
    if len(lines) < 2 or lines[0].split()[:2] != ["Qgroupid", "Referenced"]:
        raise ValueError(f"unexpected `btrfs qgroup show` header: {lines[:1]!r}")
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        level, _, ident = fields[0].partition("/")
        if len(fields) < 5 or not level.isdigit() or not ident.isdigit():
            raise ValueError(f"unexpected `btrfs qgroup show` line: {line!r}")
        if level != "0":
            continue
        limit = 0 if fields[3] == "none" else int(fields[3])
        found[int(ident)] = Use(used=int(fields[1]), limit=limit)
    return found


class WorkFolders:
    """The work folders of one project under ``root``, each limited to ``quota`` bytes."""

    def __init__(self, project: str, root: str, quota: int, docker: Docker):
        self.project, self.root, self.quota, self.docker = project, Path(root), quota, docker
        self._lock = asyncio.Lock()  # one change at a time: check and act without a gap

    def path(self, suffix: str) -> Path:
        return self.root / suffix  # suffix: [a-z0-9-] only (the policy checked it)

    def volume(self, suffix: str) -> str:
        return names.work_volume_prefix(self.project) + suffix

    def volume_body(self, suffix: str) -> dict:
        """The work volume as the broker makes it: Docker's local driver, bound to the
        user's subvolume."""
        return {"Name": self.volume(suffix), "Driver": "local",
                "DriverOpts": {"type": "none", "o": "bind", "device": str(self.path(suffix))},
                "Labels": {}}

    def is_bound(self, volume: dict, suffix: str) -> bool:
        options = volume.get("Options") or {}
        return (volume.get("Driver") == "local" and options.get("type") == "none"
                and options.get("o") == "bind" and options.get("device") == str(self.path(suffix)))

    # --- the filesystem ---------------------------------------------------------------
    async def check_root(self) -> None:
        """WORK_ROOT is a folder on btrfs with quotas on; WorkFolderError says what is not."""
        if not self.root.is_dir():
            raise WorkFolderError(f"WORK_ROOT {self.root} is not a folder the broker sees")
        await self.use()

    async def _subvolume(self, suffix: str) -> None:
        path = self.path(suffix)
        if path.is_symlink():
            raise WorkFolderError(f"{path} is a symbolic link, not a work folder: remove it")
        if not path.exists():
            await btrfs("subvolume", "create", str(path))
            log.info("made the work folder %s (a btrfs subvolume)", path)
        elif not path.is_dir() or path.stat().st_ino != SUBVOLUME_INODE:
            raise WorkFolderError(f"{path} exists but is not a btrfs subvolume, so no quota "
                                  "can hold it: move it away (the next start makes the folder)")
        # Every time: a changed WORK_QUOTA applies at the user's next start.
        await btrfs("qgroup", "limit", str(self.quota), str(path))

    async def ensure(self, suffix: str, image: str) -> None:
        """The user's subvolume exists with the quota, and their work volume is bound to it
        (a plain one is moved in first, by a helper running ``image``, the lab's).
        WorkFolderError: the lab must not be made."""
        async with self._lock:
            await self._subvolume(suffix)
            status, _, data = await self.docker("GET", f"/volumes/{self.volume(suffix)}", None)
            if status == 200:
                volume = json.loads(data)
                if self.is_bound(volume, suffix):
                    return
                await self._move_in(suffix, volume, image)
            elif status != 404:
                raise WorkFolderError(f"Docker answered {status} about the work volume "
                                      f"{self.volume(suffix)}")
            await self._make_volume(suffix)

    async def _make_volume(self, suffix: str) -> None:
        status, _, data = await self.docker("POST", "/volumes/create",
                                            json.dumps(self.volume_body(suffix)).encode())
        if status != 201:
            raise WorkFolderError(f"Docker did not make the work volume {self.volume(suffix)} "
                                  f"({status}: {data[:200]!r})")

    async def _move_in(self, suffix: str, volume: dict, image: str) -> None:
        """Copy a plain work volume's files into the subvolume, then remove the volume."""
        name = self.volume(suffix)
        if volume.get("Driver") != "local" or (volume.get("Options") or {}):
            raise WorkFolderError(f"the work volume {name} is neither a plain volume nor "
                                  f"bound to {self.path(suffix)}: move its files by hand")
        helper = names.work_move_container(self.project, suffix)
        body = {
            "Image": image, "Cmd": ["cp", "-a", "/from/.", "/to/"], "User": "0",
            "Labels": {LABEL_WORK_MOVE: suffix},
            "HostConfig": {"Binds": [f"{name}:/from:ro", f"{self.path(suffix)}:/to"],
                           "NetworkMode": "none", "CapDrop": ["ALL"],
                           "CapAdd": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"],
                           "SecurityOpt": ["no-new-privileges"], "AutoRemove": False,
                           "LogConfig": {"Type": "json-file",
                                         "Config": {"max-size": "1m", "max-file": "1"}}},
        }
        await self.docker("DELETE", f"/containers/{helper}?force=true", None)
        status, _, data = await self.docker("POST", f"/containers/create?name={helper}",
                                            json.dumps(body).encode())
        if status != 201:
            raise WorkFolderError(f"could not make the helper that moves {name} into "
                                  f"{self.path(suffix)} ({status}: {data[:200]!r})")
        try:
            status, _, data = await self.docker("POST", f"/containers/{helper}/start", None)
            if status not in (204, 304):
                raise WorkFolderError(f"the helper that moves {name} did not start ({status})")
            status, _, data = await self.docker("POST", f"/containers/{helper}/wait", None)
            code = json.loads(data).get("StatusCode") if status == 200 else None
            if code != 0:
                _, _, logs = await self.docker(
                    "GET", f"/containers/{helper}/logs?stdout=1&stderr=1&tail=3", None)
                raise WorkFolderError(
                    f"the files of {name} could not all be copied into {self.path(suffix)} "
                    f"(exit {code}; {_last_line(logs)}); they stay in the volume. If the "
                    f"folder is larger than WORK_QUOTA ({self.quota} bytes), raise WORK_QUOTA "
                    "or make room, then start again")
        finally:
            await self.docker("DELETE", f"/containers/{helper}?force=true", None)
        status, _, data = await self.docker("DELETE", f"/volumes/{name}", None)
        if status != 204:
            raise WorkFolderError(f"copied {name} into {self.path(suffix)} but could not "
                                  f"remove the volume ({status}: {data[:200]!r})")
        log.info("moved the work volume %s into %s (WORK_QUOTA)", name, self.path(suffix))

    async def remove(self, suffix: str) -> None:
        """The user's subvolume, after Docker removed their work volume."""
        async with self._lock:
            path = self.path(suffix)
            if path.is_dir() and not path.is_symlink() and path.stat().st_ino == SUBVOLUME_INODE:
                await btrfs("subvolume", "delete", str(path))
                log.info("removed the work folder %s", path)

    async def use(self) -> dict[str, Use]:
        """Each work folder's use, by escaped user."""
        groups = parse_qgroups(await btrfs("qgroup", "show", "--raw", "-re", str(self.root)))
        found = {}
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not entry.is_dir(follow_symlinks=False) or entry.inode() != SUBVOLUME_INODE:
                continue
            ident = (await btrfs("inspect-internal", "rootid", entry.path)).strip()
            if ident.isdigit() and int(ident) in groups:
                found[entry.name] = groups[int(ident)]
        return found


def _last_line(data: bytes) -> str:
    # Docker's log stream frames each line with an 8-byte header; only the text is wanted.
    text = bytes(b for b in data if b >= 0x20 or b in (0x0a,)).decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"
