"""The hub's GPU state: one object per hub process, which every lab spawner asks.

Who holds which GPU is Docker's record (the labs' labels); what Docker cannot show yet lives
here: grants of starts in flight, the line of users waiting for a GPU, the start slots, the
GPUs out of service, and the usage journals. Grants are decided by :meth:`GpuState.grant` with no ``await``, so a
check and the grant it allows are atomic in the hub's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gpuhub.core.allocator import GpuAllocator
from gpuhub.core.files import write_atomically
from gpuhub.core.outofservice import Entry, OutOfService, back_requests
from gpuhub.core.samples import read_samples
from gpuhub.core.usage import UsageJournal
from gpuhub.hub.gpuline import GpuLine, previous_line_file
from gpuhub.hub.grants import PendingGrants
from gpuhub.hub.startslots import StartSlots

# While anyone waits, GPUs are offered this often (labs also end outside the hub: killed,
# crashed, removed by hand), and at once when a lab of this hub stops.
LINE_ROUND_SECONDS = 3


class GpuState:
    """Grants in flight, the line, start slots and usage journals, for the whole hub."""

    def __init__(self, *, devices: list[str], policy: str, limits: dict[str, int],
                 pins: dict[str, list[str]], line_max: int, start_concurrency: int,
                 slices: dict[str, str] | None = None, parents: dict[str, str] | None = None,
                 line_file: str = "", out_of_service_file: str = "", back_dir: str = "",
                 samples_file: str = ""):
        self.allocator = GpuAllocator(devices=list(devices), policy=policy, limits=dict(limits),
                                      pins={u: list(d) for u, d in pins.items()},
                                      slices=dict(slices or {}))
        self.parents = dict(parents or {})  # MIG instance: the GPU the sampler reads it as
        self.grants = PendingGrants()
        self.line = GpuLine(line_max)
        self.start_slots = StartSlots(start_concurrency)
        self.line_file = Path(line_file) if line_file else None
        self.out_of_service = (OutOfService.load(Path(out_of_service_file))
                               if out_of_service_file else OutOfService())
        self.back_dir = Path(back_dir) if back_dir else None
        self.samples_file = Path(samples_file) if samples_file else None
        self._fault_watch: asyncio.Task | None = None
        self._journals: dict[str, UsageJournal] = {}
        self._line_pump: asyncio.Task | None = None
        self._line_kick: asyncio.Event | None = None
        # Who waited when the hub last stopped (read once from the previous line file).
        self._waited_before_restart: set[str] | None = None

    # --- grants ----------------------------------------------------------------
    def grant(self, user: str, groups: list[str], gpus: int,
              held: dict[str, list[str]], gpu_slice: str = "") -> tuple[list[str], int | None]:
        """Choose ``user``'s GPUs (``gpu_slice``: MIG instances of that profile) given what
        Docker says is ``held`` and the grants in flight: (device IDs, the grant's ticket or
        None). Raises NoGpuAvailable. No await."""
        everyone = {u: list(ds) for u, ds in held.items()}
        for holder, ids in self.grants.held().items():
            everyone.setdefault(holder, []).extend(ids)
        ids = self.allocator.allocate(user, gpus, everyone, groups,
                                      out_of_service=self.out_of_service.devices(),
                                      gpu_slice=gpu_slice)
        return ids, (self.grants.add(user, ids) if ids else None)

    # --- GPUs out of service ---------------------------------------------------------
    def take_out_of_service(self, device: str, reason: str, log: logging.Logger) -> Entry:
        """``device`` failed a start: no grant hands it out until it reads healthy again or
        an admin brings it back. No await."""
        if self.out_of_service.take_out(device, reason, time.time()):
            log.error("GPU %s is out of service: %s (back when nvidia-smi reads it again, "
                      "or with `invoke gpus --back %s`)", device, reason, device)
            if self.out_of_service.save_error:
                log.warning("%s", self.out_of_service.save_error)
        return self.out_of_service.entries[device]

    def watch_faults(self, log: logging.Logger) -> None:
        """Keep the GPUs out of service current (the sampler's readings, the admin's
        requests) for as long as the hub runs; harmless to call again."""
        if self._fault_watch is None and self.allocator.devices and (
                self.samples_file is not None or self.back_dir is not None):
            self._fault_watch = asyncio.ensure_future(self._watch_faults(log))

    def read_fault_news(self, now: float) -> tuple[list[str], dict | None]:
        """The admin's requests to bring GPUs back and the sampler's latest reading (file
        reads: the watcher runs this in a thread, and changes nothing)."""
        asked = back_requests(self.back_dir) if self.back_dir is not None else []
        samples = read_samples(self.samples_file, now)[0] if self.samples_file else None
        return asked, samples

    def apply_fault_news(self, asked: list[str], samples: dict | None, now: float,
                         log: logging.Logger) -> list[str]:
        """Bring back what the admin asked for and what reads healthy, take out what the
        sampler cannot read; returns the GPUs back in service. No await."""
        back = []
        for device in asked:
            if self.out_of_service.bring_back(device):
                log.warning("GPU %s is back in service: an admin brought it back", device)
                back.append(device)
        interval = float((samples or {}).get("interval") or 5)
        out, healthy = self.out_of_service.from_readings(self.allocator.devices, samples,
                                                         interval, now, self.parents)
        for entry in out:
            log.error("GPU %s is out of service: %s", entry.device, entry.reason)
        for device in healthy:
            log.warning("GPU %s is back in service: nvidia-smi reads it again", device)
        return back + healthy

    async def _watch_faults(self, log: logging.Logger) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                now = time.time()
                asked, samples = await loop.run_in_executor(None, self.read_fault_news, now)
                if self.apply_fault_news(asked, samples, now, log):
                    self.kick_line()  # a GPU is back: offer it to those in line
            except Exception as err:  # a bad file must not end the watch
                log.warning("Could not check the GPUs out of service: %s", err)
            await asyncio.sleep(LINE_ROUND_SECONDS)

    # --- the line ------------------------------------------------------------------
    def kick_line(self) -> None:
        """A lab stopped: offer its GPUs now rather than at the next round."""
        if self._line_kick is not None:
            self._line_kick.set()

    def pump_line(self, offer: Callable[[], Awaitable[None]], log: logging.Logger) -> None:
        """Keep offering GPUs to those in line (``offer``: one round) while anyone waits."""
        if self._line_kick is None:
            self._line_kick = asyncio.Event()
        if self._line_pump is None:
            self._line_pump = asyncio.ensure_future(self._pump(offer, log))
        self._line_kick.set()  # a GPU may have been freed since the refusal

    async def _pump(self, offer: Callable[[], Awaitable[None]], log: logging.Logger) -> None:
        kick = self._line_kick
        assert kick is not None  # set by pump_line before the task starts
        while len(self.line):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINE_ROUND_SECONDS):
                    await kick.wait()
            kick.clear()
            try:
                await offer()
            except Exception as err:  # Docker unreachable for a moment: try again
                log.warning("Could not offer GPUs to those in line: %s", err)
        self._line_pump = None

    def save_line(self, log: logging.Logger) -> None:
        """Who waits now, on the hub's volume (read after a restart: waited_before_restart)."""
        if self.line_file is None:
            return
        try:
            write_atomically(self.line_file, json.dumps(self.line.as_json()), mode=0o600)
        except OSError as err:
            log.warning("Could not save who waits for a GPU to %s: %s", self.line_file, err)

    def waited_before_restart(self, user: str) -> bool:
        """Whether ``user`` was in line when the hub last stopped (true once per user)."""
        if self.line_file is None:
            return False
        if self._waited_before_restart is None:
            try:
                self._waited_before_restart = {w["user"] for w in json.loads(
                    previous_line_file(self.line_file).read_text())}
            except (OSError, ValueError, TypeError, KeyError):
                self._waited_before_restart = set()
        if user in self._waited_before_restart:
            self._waited_before_restart.discard(user)
            return True
        return False

    # --- usage records ---------------------------------------------------------
    def journal(self, path: str, log: logging.Logger) -> UsageJournal:
        """The usage journal at ``path`` (one object per file and hub process)."""
        if path not in self._journals:
            self._journals[path] = UsageJournal(path, log=log)
        return self._journals[path]
