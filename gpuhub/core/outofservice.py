"""GPUs out of service: taken out of the allocation after a fault, with the reason.

A GPU goes out of service when the NVIDIA toolkit refuses to give it to a lab (the start
fails with the toolkit's own words, :func:`nvidia_refusal`), or when the gpu-sampler
cannot read it while it reads the others (a GPU fallen off the bus). It comes back when
the sampler reads it again after it went out (the driver sees it healthy), or when an
admin says so (``invoke gpus --back <GPU>``, which leaves a request in
``names.GPU_BACK_DIR`` that the hub takes up).

The hub keeps the list (:class:`OutOfService`) and writes it to its volume
(``names.GPU_OUT_OF_SERVICE_FILE``) for the GPU page, the metrics and ``invoke gpus``, and
so that a hub restart keeps it. No Docker and no JupyterHub here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from gpuhub.core.files import write_atomically

# nvidia-container-cli's words (libnvidia-container src/cli/*.c) inside Docker's start
# error, which quotes the hook's stderr: "... stderr: nvidia-container-cli: device error:
# 9: unknown device: unknown". The device ID may itself hold ":" (a PCI bus ID).
_UNKNOWN_DEVICE = re.compile(r"nvidia-container-cli: device error: (\S+?): unknown device")
# Docker >= 29.2 with CDI names the device it cannot resolve (a CDI name: an index, a
# UUID, or a MIG instance's "<gpu>:<mig>"; runc's ": unknown" follows it).
_UNRESOLVED_CDI = re.compile(r"unresolvable CDI devices? nvidia\.com/gpu=([^\s,;\"']+?)"
                             r"(?=:?\s|[,;\"']|:?$)")
# Every GPU start fails: the driver cannot enumerate a GPU (one lost fails them all), or
# NVML does not start (driver/library mismatch after an upgrade without a reboot). The
# reason ends where Docker's quoting does (a quote, a backslash, a newline); runc adds
# ": unknown" (the error's kind), and Docker's CLI a full stop.
_EVERY_START = re.compile(r"nvidia-container-cli: (?:detection|initialization) error: "
                          r"([^\n\"\\]+?)(?:: unknown)?\.?(?=[\n\"\\]|$)")


@dataclass(frozen=True)
class NvidiaRefusal:
    """The NVIDIA toolkit refused a lab's GPUs: ``device`` ("" for every GPU) and why."""

    device: str
    reason: str


def nvidia_refusal(error: str) -> NvidiaRefusal | None:
    """The toolkit's refusal in Docker's start error, or None when it is something else."""
    for pattern in (_UNKNOWN_DEVICE, _UNRESOLVED_CDI):
        found = pattern.search(error)
        if found:
            return NvidiaRefusal(device=found.group(1), reason="the NVIDIA driver does not "
                                                               "know this device")
    found = _EVERY_START.search(error)
    if found:
        return NvidiaRefusal(device="", reason=found.group(1).strip()[:200])
    return None


@dataclass(frozen=True)
class Entry:
    """One GPU out of service: its device ID, why, and since when (epoch seconds)."""

    device: str
    reason: str
    since: float


class OutOfService:
    """The GPUs out of service, by device ID; saved to ``path`` at each change."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.entries: dict[str, Entry] = {}
        self.save_error = ""  # why the last save failed ("" once one worked)

    def __contains__(self, device: str) -> bool:
        return device in self.entries

    def devices(self) -> set[str]:
        return set(self.entries)

    def take_out(self, device: str, reason: str, now: float) -> bool:
        """Take ``device`` out of service; False if it was out already (reason kept)."""
        if device in self.entries:
            return False
        self.entries[device] = Entry(device, reason, now)
        self.save()
        return True

    def bring_back(self, device: str) -> bool:
        if self.entries.pop(device, None) is None:
            return False
        self.save()
        return True

    def from_readings(self, devices: list[str], samples: dict | None, interval: float,
                      now: float, read_as: Mapping[str, str] | None = None,
                      ) -> tuple[list[Entry], list[str]]:
        """Apply a fresh reading of the sampler: (taken out, brought back).

        A GPU the reading lists without a fault is healthy: back in service if it went out
        at least one interval before the reading was taken (a reading from before the fault
        proves nothing). A GPU listed with a fault (it needs a reset), or one of the
        inventory the reading leaves out while it reads others and says what failed, is out
        of service. ``read_as``: the GPU a device is read as (a MIG
        instance: its parent GPU, as nvidia-smi --query-gpu lists whole GPUs only).
        """
        if not samples:
            return [], []
        taken = float(samples.get("taken_at") or 0)
        healthy = [g for g in samples.get("gpus", []) if not g.get("fault")]
        read = {g.get("uuid") for g in healthy} | {g.get("index") for g in healthy}
        faults = {key: str(g["fault"])[:200] for g in samples.get("gpus", []) if g.get("fault")
                  for key in (g.get("uuid"), g.get("index"))}
        out, back = [], []
        for device in devices:  # a UUID, or an index where the inventory has no UUID
            as_read = (read_as or {}).get(device, device)
            seen = as_read in read
            entry = self.entries.get(device)
            if seen and entry is not None and taken >= entry.since + interval:
                self.bring_back(device)
                back.append(device)
            elif as_read in faults and entry is None:  # the sampler says why (a reset)
                self.take_out(device, faults[as_read], now)
                out.append(self.entries[device])
            elif not seen and read and samples.get("error") and entry is None:
                reason = f"nvidia-smi cannot read it ({str(samples['error'])[:160]})"
                self.take_out(device, reason, now)
                out.append(self.entries[device])
        return out, back

    def as_json(self) -> list[dict]:
        return [asdict(e) for e in sorted(self.entries.values(), key=lambda e: e.since)]

    def save(self) -> None:
        """Write the list for the GPU page and `invoke gpus`; a failure is kept in
        ``save_error`` (the allocation goes on from memory)."""
        if self.path is None:
            return
        try:
            write_atomically(self.path, json.dumps(self.as_json()), mode=0o644)
            self.save_error = ""
        except OSError as err:
            self.save_error = f"could not save the GPUs out of service to {self.path}: {err}"

    @classmethod
    def load(cls, path: Path) -> OutOfService:
        """The list the hub saved (a hub restart keeps it); empty if none or unreadable."""
        found = cls(path)
        for e in read(path):
            found.entries[e.device] = e
        return found


def read(path: Path) -> list[Entry]:
    """The GPUs out of service as the hub saved them ([] if none or unreadable)."""
    try:
        raw = json.loads(Path(path).read_text())
        return [Entry(str(e["device"]), str(e["reason"]), float(e["since"])) for e in raw]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def back_requests(directory: Path) -> list[str]:
    """Device IDs an admin asked to bring back (``invoke gpus --back``); each request is
    read once and removed."""
    asked = []
    try:
        requests = sorted(Path(directory).iterdir())
    except OSError:
        return []
    for request in requests:
        try:
            device = request.read_text().strip()
            request.unlink()
        except OSError:
            continue
        if device:
            asked.append(device)
    return asked
