"""The lab spawner: DockerSpawner plus profiles and GPUs handed over as device requests.

Each lab gets exactly the device IDs in ``gpu_ids`` and ``NVIDIA_VISIBLE_DEVICES`` set
explicitly (``void`` for none): CUDA base images set it to ``all``, and on hosts whose
default runtime is ``nvidia`` that variable alone would expose every GPU.
The grant is written on the container as labels, so Docker is the record of who holds
which GPU; the allocator reads it back before every grant, together with the grants of
spawns whose containers Docker may not list yet, kept with the line and the start slots in
the hub's one GPU state (``gpustate.GpuState``).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import docker
import requests
from docker.types import DeviceRequest
from dockerspawner import DockerSpawner
from tornado import web
from traitlets import Bool, Dict, Integer, List, Unicode, default

from gpuhub.core import names
from gpuhub.core.allocator import EXCLUSIVE, POLICIES, GpuAllocator, NoGpuAvailable
from gpuhub.core.gpureport import duration
from gpuhub.core.labels import GPUS as LABEL_GPUS
from gpuhub.core.labels import PROFILE as LABEL_PROFILE
from gpuhub.core.labels import PROJECT as LABEL_PROJECT
from gpuhub.core.labels import SINCE as LABEL_SINCE
from gpuhub.core.labels import USER as LABEL_USER
from gpuhub.core.labels import gpus_of
from gpuhub.core.outofservice import Entry, nvidia_refusal
from gpuhub.core.profiles import Profile, ProfileRejected, Profiles
from gpuhub.core.stopreasons import take_reason
from gpuhub.core.usage import parse_time
from gpuhub.hub import telemetry
from gpuhub.hub.gpuline import GpuLine, LineFull, Waiter, waiting_message
from gpuhub.hub.gpustate import GpuState
from gpuhub.hub.startslots import StartSlot, StartSlots


class StartRefused(web.HTTPError):
    """A start that failed before the lab served, with the reason the metrics count
    (``refusal``: tornado's HTTPError has a ``reason`` of its own, the HTTP reason phrase)."""

    def __init__(self, status: int, message: str, refusal: str):
        super().__init__(status, message)
        self.refusal = refusal


class GpuDockerSpawner(DockerSpawner):
    """DockerSpawner that applies a validated profile and gives the lab its GPUs."""

    gpu_inventory = List(
        Unicode(), help="Device IDs (UUIDs or indices) of the host GPUs labs may use.",
    ).tag(config=True)
    gpu_policy = Unicode(EXCLUSIVE, help=f"One of {', '.join(POLICIES)}.").tag(config=True)
    gpu_limits = Dict(help="Most GPUs per lab: {user|@group|*: n}.").tag(config=True)
    gpu_pins = Dict(help="Reserved device IDs: {user: [device id, ...]}.").tag(config=True)
    gpu_slices = Dict(
        help="The MIG instances in gpu_inventory: {device id: MIG profile such as '1g.5gb'}; "
             "a profile's gpu_slice asks for those, any other GPU profile for whole GPUs.",
    ).tag(config=True)
    gpu_parents = Dict(
        help="The parent GPU's UUID of each MIG instance in gpu_inventory: the sampler reads "
             "the parent (nvidia-smi lists whole GPUs only), so a lost parent takes its "
             "instances out of service and one read again brings them back.",
    ).tag(config=True)
    gpu_env_extra = Dict(help="Extra environment for labs that have GPUs.").tag(config=True)
    profiles_yaml = Unicode(help="The text of profiles.yaml (validated at hub start).").tag(config=True)
    project = Unicode("gpuhub", help="Compose project name; the label on every lab.").tag(config=True)

    docker_threads = Integer(
        8, help="Threads for Docker API calls. DockerSpawner uses one for every user, so "
                "ten users pressing Start queue behind each other's calls.",
    ).tag(config=True)
    require_lab_firewall = Bool(
        False, help="Start a lab only while the project's lab-firewall service is healthy "
                    "(its rules are in place): labs never run unprotected, even when the "
                    "firewall was stopped or died.",
    ).tag(config=True)
    require_lab_memory = Bool(
        False, help="Start a lab only while the project's lab-memory service is healthy "
                    "(the labs' parent cgroup and its limit are in place).",
    ).tag(config=True)

    boot_timeout = Integer(
        300, help="Seconds a lab may take from its container's creation until it serves "
                  "(SPAWN_TIMEOUT); a wait in line for a GPU comes before and is not counted.",
    ).tag(config=True)
    gpu_line_timeout = Integer(
        0, help="Seconds a start waits in line for a GPU when none is free (0: refuse at once).",
    ).tag(config=True)
    gpu_line_max = Integer(20, help="Most users waiting in line for a GPU.").tag(config=True)
    line_file = Unicode(
        "", help="Where the hub keeps who waits in line (empty: nowhere), so that after a "
                 "restart they are told their wait ended.",
    ).tag(config=True)

    out_of_service_file = Unicode(
        "", help="Where the hub keeps the GPUs out of service (empty: in memory only).",
    ).tag(config=True)
    gpu_back_dir = Unicode(
        "", help="Where `invoke gpus --back` leaves its requests (empty: none taken).",
    ).tag(config=True)
    gpu_samples_file = Unicode(
        "", help="The gpu-sampler's readings: a GPU it cannot read goes out of service, "
                 "one it reads again comes back (empty: no sampler).",
    ).tag(config=True)

    lab_start_concurrency = Integer(
        0, help="Labs that may boot at once, from `docker start` until the lab accepts "
                "connections; the others wait their turn. 0: no limit.",
    ).tag(config=True)

    stop_reasons_dir = Unicode(
        "", help="Where the gpu-reclaimer leaves why it stops a lab (one file per user), for "
                 "the user and the records; empty: none.",
    ).tag(config=True)
    usage_journal = Unicode(
        "", help="The file of every lab's start and stop (GPU-hours, `invoke usage`); "
                 "empty: none kept.",
    ).tag(config=True)

    gpu_ids = List(Unicode(), help="Device IDs granted to this lab while it runs.")
    _said_stop_reason = ""
    last_stop_reason = Unicode(
        "", help="Why the user's last lab ended, after 'Your last lab ' (e.g. 'stopped by "
                 "itself: out of memory'); said at "
                 "their next start, then forgotten.")
    _configured: dict | None = None  # image and limits before any profile was applied
    _give_back_start_slot: Callable[[], None] | None = None
    _start_slot: StartSlot = StartSlot.NOT_YET
    _grant: int | None = None  # this spawn's ticket in gpu_state.grants
    _waiter: Waiter | None = None  # this start's place in line, while it waits for a GPU
    _choosing_gpus = False  # from the start until its GPUs are granted (or refused)
    _since: datetime.datetime | None = None  # the SINCE label of the lab being started
    _gpu_fault_notes: list[str] = []  # this start's GPUs that failed, for its progress
    _trying_gpus = False  # from the first grant until the lab serves or the start failed
    # Whether start() was called for the spawn JupyterHub has under way (_spawn_pending):
    # JupyterHub answers a progress request from the moment it begins the spawn, and
    # calls start() only after a few awaits of its own.
    _start_began = False
    _pending = False

    @property
    def _spawn_pending(self) -> bool:  # JupyterHub's own flag, set when a spawn begins
        return self._pending

    @_spawn_pending.setter
    def _spawn_pending(self, pending: bool) -> None:
        if pending and not self._pending:
            self._start_began = False  # a new spawn: its start() is still to come
        self._pending = pending
    # Labs waiting to accept connections now (wait_until_serving), in this hub process.
    _booting: ClassVar[int] = 0
    # Health questions to Docker on their way, shared by the starts that ask meanwhile.
    _health_asked: ClassVar[dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future]] = {}

    # The hub's GPU state (grants in flight, the line, start slots, usage journals): one per
    # hub process, made from the first spawner's configuration (the same for every user).
    _gpu_state: ClassVar[GpuState | None] = None

    @property
    def executor(self) -> ThreadPoolExecutor:
        cls = type(self)
        if cls._executor is None:
            cls._executor = ThreadPoolExecutor(self.docker_threads,
                                               thread_name_prefix="gpuhub-docker")
        return cls._executor

    @property
    def gpu_state(self) -> GpuState:
        """The hub's GPU state, which every spawner of the hub process shares."""
        cls = GpuDockerSpawner
        if cls._gpu_state is None:
            cls._gpu_state = GpuState(
                devices=list(self.gpu_inventory), policy=self.gpu_policy,
                limits=dict(self.gpu_limits), pins=dict(self.gpu_pins),
                slices=dict(self.gpu_slices), parents=dict(self.gpu_parents),
                line_max=self.gpu_line_max, start_concurrency=self.lab_start_concurrency,
                line_file=self.line_file, out_of_service_file=self.out_of_service_file,
                back_dir=self.gpu_back_dir, samples_file=self.gpu_samples_file)
        return cls._gpu_state

    @property
    def start_slots(self) -> StartSlots:
        return self.gpu_state.start_slots

    @property
    def allocator(self) -> GpuAllocator:
        return self.gpu_state.allocator

    @property
    def line(self) -> GpuLine:
        return self.gpu_state.line

    async def record(self, event: str, *args) -> None:
        """Append a start or stop to the usage journal (fsync'd, so off the event loop).
        A failed write is logged by the journal and never fails the start or stop."""
        if not self.usage_journal:
            return
        journal = self.gpu_state.journal(self.usage_journal, self.log)
        await asyncio.get_running_loop().run_in_executor(
            self.executor, getattr(journal, event), *args)

    @property
    def profiles(self) -> Profiles:
        return Profiles.from_yaml(self.profiles_yaml, "profiles.yaml").usable(
            len(self.gpu_inventory), self.device_kinds())

    def device_kinds(self) -> dict[str, int]:
        """How many devices of each kind labs may be given: "" whole GPUs, else a MIG profile."""
        kinds = {"": 0}
        for device in self.gpu_inventory:
            kind = self.gpu_slices.get(device, "")
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    @default("options_form")
    def _default_options_form(self):
        return self.profiles.options_form() if self.profiles_yaml else ""

    async def get_options_form(self):
        """The form with how many GPUs are free right now, read from Docker."""
        if not self.profiles_yaml:
            return ""
        self.gpu_state.watch_faults(self.log)
        try:
            with self.gpu_state.grants.snapshot():
                held = await self.held_gpus()
                busy = {d for ids in held.values() for d in ids}
                busy |= {d for ids in self.gpu_state.grants.held().values() for d in ids}
            busy |= self.gpu_state.out_of_service.devices()
            free = sum(1 for d in self.gpu_inventory if d not in busy)
            kinds: dict[str, tuple[int, int]] = {}
            for d in self.gpu_inventory:  # whole GPUs ("") and each MIG profile apart
                have, of = kinds.get(self.gpu_slices.get(d, ""), (0, 0))
                kinds[self.gpu_slices.get(d, "")] = (have + (d not in busy), of + 1)
        except Exception as err:  # the form still works; it just cannot say what is free
            self.log.warning("Could not count the free GPUs for the spawn form: %s", err)
            free, kinds = None, {}
        return self.profiles.options_form(free=free, total=len(self.gpu_inventory),
                                          kinds=kinds if self.gpu_slices else None)

    @default("options_from_form")
    def _default_options_from_form(self):
        return lambda formdata: Profiles.options_from_form(formdata)

    # --- the lab firewall and the labs' memory limit --------------------------------
    async def service_healthy(self, service: str) -> bool:
        """Docker says the project's ``service`` container is healthy. Starts that ask
        while an answer is on its way share it (a storm of starts asks Docker once, not once
        each); an answer is never reused once it has arrived."""
        key = (asyncio.get_running_loop(), service)
        asking = GpuDockerSpawner._health_asked.get(key)
        if asking is None or asking.done():
            asking = asyncio.ensure_future(self.docker("containers", filters={
                "label": [f"{names.COMPOSE_PROJECT_LABEL}={self.project}",
                          f"{names.COMPOSE_SERVICE_LABEL}={service}"],
                "health": "healthy"}))
            GpuDockerSpawner._health_asked = {k: f for k, f in
                                              GpuDockerSpawner._health_asked.items()
                                              if not f.done()} | {key: asking}
        return bool(await asyncio.shield(asking))

    async def check_lab_firewall(self) -> None:
        """Refuse the spawn (503) unless the project's lab-firewall container is healthy,
        and its lab-memory container, when labs run under one memory limit. Both are asked
        at once (a start waits for one answer, not two in a row); any failed question
        fails the start."""
        guards = [guard for guard in (
            (self.require_lab_firewall, names.LAB_FIREWALL_SERVICE,
             "behind the lab firewall, which is not running", "lab_firewall_down"),
            (self.require_lab_memory, names.LAB_MEMORY_SERVICE,
             "under the labs' memory limit, which is not in place", "lab_memory_down"),
        ) if guard[0]]
        answers = await asyncio.gather(*(self.service_healthy(g[1]) for g in guards))
        for (_, service, what, reason), healthy in zip(guards, answers, strict=True):
            if not healthy:
                self.log.error("Refused to start a lab for %s: the %s service of %s is not "
                               "healthy (see `docker compose logs %s`)",
                               self.user.name, service, self.project, service)
                raise StartRefused(503, f"labs start only {what} right now; ask an admin "
                                        "to run `invoke up`", reason)

    # --- what Docker says is held --------------------------------------------
    async def held_gpus(self) -> dict[str, list[str]]:
        """Device IDs held by running labs of this project, by user, from container labels."""
        containers = await self.docker("containers", filters={"label": f"{LABEL_PROJECT}={self.project}"})
        held: dict[str, list[str]] = {}
        for c in containers:
            labels = c.get("Labels") or {}
            ids = gpus_of(labels)
            if ids and labels.get(LABEL_USER):
                held.setdefault(labels[LABEL_USER], []).extend(ids)
        return held

    async def grant_from_docker(self, profile: Profile) -> list[str]:
        """Ask Docker what is held, then choose this lab's GPUs; raises NoGpuAvailable.

        One snapshot spans both: no grant it may have missed is forgotten meanwhile. A lab
        without GPUs asks Docker nothing (the line is offered GPUs when labs stop).
        """
        if not profile.gpus:
            return []
        with self.gpu_state.grants.snapshot():
            held = await self.held_gpus()
            # Those in line first: a newcomer gets only GPUs nobody waiting may take.
            self.line.offer(held)
            return self.grant_gpus(profile, held)

    # --- waiting in line -----------------------------------------------------------
    def _try_grant(self, profile: Profile, held: dict[str, list[str]]) -> list[str] | None:
        try:
            return self.grant_gpus(profile, held)
        except NoGpuAvailable:
            return None

    async def offer_to_line(self) -> None:
        """Offer the GPUs Docker says are free to those in line (one snapshot, no await
        between the check and the grants)."""
        if not len(self.line):
            return
        with self.gpu_state.grants.snapshot():
            held = await self.held_gpus()
            self.line.offer(held)

    @classmethod
    def kick_line(cls) -> None:
        """A lab stopped: offer its GPUs now rather than at the next round."""
        if GpuDockerSpawner._gpu_state is not None:
            GpuDockerSpawner._gpu_state.kick_line()

    async def wait_in_line(self, profile: Profile, refusal: NoGpuAvailable,
                           first: bool = False) -> list[str]:
        """Wait for GPUs, first come, first served (``first``: at the head of the line);
        StartRefused when the line is full or the wait is longer than gpu_line_timeout.
        Cancel (Stop) leaves the line."""
        try:
            self._waiter = self.line.join(self.user.name, profile.gpus,
                                          lambda held: self._try_grant(profile, held), first)
        except LineFull:
            waiting = f"{len(self.line)} user waits" if len(self.line) == 1 else (
                f"{len(self.line)} users wait")
            raise StartRefused(409, f"{refusal}; {waiting} for a GPU already, which is as "
                                    "many as may wait: try later",
                               "queue_full") from None
        self._save_line()
        self.log.info("No GPU for %s now: waiting in line (%d waiting)", self.user.name,
                      len(self.line))
        self.gpu_state.pump_line(self.offer_to_line, self.log)
        waiter = self._waiter
        cancelled = False
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.granted),
                                          timeout=self.gpu_line_timeout)
        except TimeoutError:
            waited = duration(int(self.gpu_line_timeout))
            raise StartRefused(409, f"no GPU you may use became free within {waited} "
                                    "of waiting; choose the CPU profile or try later",
                               "queue_timeout") from None
        except asyncio.CancelledError:
            # The user's Stop (stop() then saves the line without them), or the hub
            # shutting down: then the saved line still names them for the next hub.
            cancelled = True
            raise
        finally:
            if not waiter.granted.done():
                waiter.granted.cancel()  # a later offer skips it
            self.line.leave(waiter)
            self._waiter = None
            if not cancelled:
                self._save_line()

    def _save_line(self) -> None:
        """Who waits now, on the hub's volume (read after a restart: see poll)."""
        self.gpu_state.save_line(self.log)

    def grant_gpus(self, profile: Profile, held: dict[str, list[str]]) -> list[str]:
        """Choose this lab's GPUs; raises NoGpuAvailable. No await: atomic in the hub."""
        groups = [g.name for g in getattr(self.user, "groups", [])]
        ids, self._grant = self.gpu_state.grant(self.user.name, groups, profile.gpus, held,
                                                profile.gpu_slice)
        return ids

    # --- the container ---------------------------------------------------------
    def gpu_env(self) -> dict[str, str]:
        env = {
            "NVIDIA_VISIBLE_DEVICES": ",".join(self.gpu_ids) or "void",
            "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
            "GPUHUB_GPUS": ",".join(self.gpu_ids),
        }
        if self.gpu_ids:
            env.update(self.gpu_env_extra)
        return env

    def get_env(self):
        env = super().get_env()
        env.update(self.gpu_env())
        return env

    def gpu_host_config(self) -> dict:
        if not self.gpu_ids:
            return {}
        return {"device_requests": [
            DeviceRequest(driver="nvidia", device_ids=list(self.gpu_ids), capabilities=[["gpu"]])
        ]}

    def gpu_labels(self) -> dict[str, str]:
        self._since = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        return {
            LABEL_PROJECT: self.project,
            LABEL_USER: self.user.name,
            LABEL_GPUS: ",".join(self.gpu_ids),
            LABEL_SINCE: self._since.isoformat(timespec="seconds"),
        }

    async def create_object(self):
        # Instance-level copies: the class-wide config values stay untouched.
        base_host = self._eval_if_callable(self.extra_host_config) or {}
        base_create = self._eval_if_callable(self.extra_create_kwargs) or {}
        # Not removed by Docker when it exits: poll() reads why it stopped (OOMKilled, exit
        # code) and removes it then; stop() removes it too (remove=True).
        self.extra_host_config = {**base_host, **self.gpu_host_config(), "auto_remove": False}
        labels = {**base_create.get("labels", {}), **self.gpu_labels()}
        if self.user_options.get("profile"):
            labels[LABEL_PROFILE] = self.user_options["profile"]
        self.extra_create_kwargs = {**base_create, "labels": labels}
        return await super().create_object()

    def apply_profile(self, profile: Profile) -> None:
        """Set image and limits from the profile, else from the settings.

        The spawner object lives as long as the user: without going back to the
        configured values, one profile's image or limits would leak into the next start.
        """
        if self._configured is None:
            self._configured = {"image": self.image, "cpu_limit": self.cpu_limit,
                                "mem_limit": self.mem_limit}
        base = self._configured
        self.image = profile.image or base["image"]
        self.cpu_limit = profile.cpu_limit if profile.cpu_limit is not None else base["cpu_limit"]
        self.mem_limit = profile.mem_limit if profile.mem_limit is not None else base["mem_limit"]

    def resolve_profile(self) -> Profile:
        """The profile this start uses (400 for a tampered choice), applied to the spawner."""
        try:
            profile = self.profiles.resolve(self.user_options) if self.profiles_yaml else Profile(
                slug="default", display_name="default", gpus=self.device_kinds()[""])
        except ProfileRejected as err:
            raise StartRefused(400, str(err), "bad_profile") from None
        # DockerSpawner would honour user_options["image"]; only the profile decides.
        self.user_options = {"profile": profile.slug} if self.profiles_yaml else {}
        self.apply_profile(profile)
        return profile

    async def start(self):
        # This start's state, set before anything awaits: progress() reads it from now on.
        self._start_began = True
        self._choosing_gpus = True  # until choose_gpus() has granted (or refused) them
        self._gpu_fault_notes = []
        self._start_slot = StartSlot.NOT_YET
        # Said once more, in this start's progress; the home page no longer shows it.
        self._said_stop_reason, self.last_stop_reason = self.last_stop_reason, ""
        began = time.monotonic()
        try:
            served = await self.start_with_gpus()
        except Exception as err:
            failure = docker_failure(err)
            if failure is not None:  # the user reads one line; the hub's log keeps Docker's
                self.log.error("The lab of %s did not start: Docker's call failed: %s",
                               self.user.name, err)
            refusal = getattr(failure or err, "refusal", None) or "error"
            telemetry.installed().spawns_refused.labels(reason=refusal).inc()
            if failure is not None:
                raise failure from err
            raise
        finally:
            self._done_booting()  # also when the profile or the GPUs were refused
            self._choosing_gpus = False  # also when it ended before choose_gpus()
        profile = self.user_options.get("profile", "default")
        telemetry.installed().spawn_duration.labels(profile=profile).observe(
            time.monotonic() - began)
        return served

    async def start_with_gpus(self):
        """The profile, the lab firewall, the lab's GPUs (waiting in line for them if need
        be), then the lab itself (create_and_serve_lab). A GPU the NVIDIA toolkit refuses
        goes out of service, and the start takes another (first in line for one)."""
        profile = self.resolve_profile()
        await self.check_lab_firewall()
        self.gpu_state.watch_faults(self.log)
        failed: list[Entry] = []
        self._trying_gpus = True
        try:
            while True:
                await self.choose_gpus(profile, failed)
                granted = list(self.gpu_ids)
                try:
                    return await self.create_and_serve_lab()
                except Exception as err:
                    entry = self.gpu_refused(err, granted)
                    if entry is None or len(failed) >= len(self.gpu_inventory):
                        raise
                failed.append(entry)
                self._gpu_fault_notes.append(
                    f"GPU {entry.device} is out of service: {entry.reason}; you are next "
                    "in line for another")
                self.end_grant()
        finally:
            self._trying_gpus = False
            # Also when the wait in line ended (cancelled, out of time) after a grant.
            self.end_grant()

    def end_grant(self) -> None:
        if self._grant is not None:
            self.gpu_state.grants.end(self._grant)
            self._grant = None

    async def choose_gpus(self, profile: Profile, failed: list[Entry]) -> None:
        """Grant this lab's GPUs, or wait in line for them (at its head after a GPU failed
        under this start: ``failed``); StartRefused if neither can be."""
        self._choosing_gpus = True
        try:
            try:
                self.gpu_ids = await self.grant_from_docker(profile)
            except NoGpuAvailable as err:
                if err.detail:
                    self.log.warning("No GPU for %s (%s): %s", self.user.name, err, err.detail)
                if err.reason != "gpus_busy" or not self.gpu_line_timeout:
                    said = "".join(f"GPU {e.device} is out of service: {e.reason}; "
                                   for e in failed)
                    raise StartRefused(409, f"{said}{err}", err.reason) from None
                self.gpu_ids = await self.wait_in_line(profile, err, first=bool(failed))
        finally:
            self._choosing_gpus = False
        if self.gpu_ids:
            self.log.info("GPUs %s granted to %s", ",".join(self.gpu_ids), self.user.name)

    def gpu_refused(self, err: Exception, granted: list[str]) -> Entry | None:
        """The NVIDIA toolkit refused the lab's GPUs: the GPU it names goes out of service
        (returned, for another try); when it refuses every GPU, StartRefused with one line.
        None: the start failed for another reason."""
        refusal = nvidia_refusal(str(err)) if granted else None
        if refusal is None:
            return None
        device = next((d for d in granted if d.lower() == refusal.device.lower()), None)
        if device is not None:
            return self.gpu_state.take_out_of_service(device, refusal.reason, self.log)
        out = self.gpu_state.out_of_service.entries.values()
        known = "".join(f"; GPU {e.device} is out of service: {e.reason}" for e in out)
        self.log.error("The NVIDIA toolkit refused the GPUs of %s (%s): %s", self.user.name,
                       ",".join(granted), err)
        raise StartRefused(503, f"GPUs cannot be given to labs right now: the NVIDIA "
                                f"driver reports \"{refusal.reason}\"{known}; an admin must "
                                "check the GPUs (`invoke gpus`); the CPU profile still works",
                           "gpu_fault") from None

    async def create_and_serve_lab(self) -> tuple[str, int]:
        """Create and start the lab, wait until it serves; on failure leave nothing behind."""
        try:
            ip, port = await DockerSpawner.start(self)
            await self.wait_until_serving(ip, port)
        except Exception:
            self._done_booting()
            # No half-created lab: remove it so its GPUs are free for others.
            await self._remove_quietly()
            self.gpu_ids = []
            raise
        await self.record("started", self.object_id, self.user.name,
                          self.user_options.get("profile", ""), list(self.gpu_ids),
                          self._since or datetime.datetime.now(datetime.UTC))
        return ip, port

    async def start_object(self):
        # The start slot is taken only now: pulling the image and creating the container
        # do not hold one; it is given back in start() once the lab accepts connections.
        self._start_slot = StartSlot.WAITING
        self._give_back_start_slot = await self.start_slots.acquire()
        self._start_slot = StartSlot.HELD
        await super().start_object()

    def _done_booting(self) -> None:
        self._start_slot = StartSlot.DONE
        if self._give_back_start_slot:
            self._give_back_start_slot()
            self._give_back_start_slot = None

    async def wait_until_serving(self, ip: str, port: int) -> None:
        """Return once the lab accepts connections; fail at once, clearly, if it dies.

        JupyterHub alone would wait the whole http_timeout for a lab that exited in its
        first second (wrong command, too little memory), and then report a generic 500.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.boot_timeout
        # Most labs serve within a second: they are never inspected.
        next_inspect = loop.time() + 1
        GpuDockerSpawner._booting += 1
        try:
            while loop.time() < deadline:
                try:
                    _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 1)
                    writer.close()
                    return
                except (TimeoutError, OSError):
                    pass
                # A lab alone is tried every 50 ms: the hub notices it ready 25 ms later on
                # average. Labs booting together share the cores, so each boots about that
                # many times slower, and is tried that many times less often (at most once a
                # second): the hub's tries cost it no more in a storm than for one lab. The
                # same for the Docker inspect that notices a lab that died: once a second
                # for a lab alone, at most four a second for a storm's labs (up to 20).
                if loop.time() >= next_inspect:
                    next_inspect = loop.time() + dead_check_interval(GpuDockerSpawner._booting)
                    await self._fail_if_dead()
                await asyncio.sleep(serving_poll_interval(GpuDockerSpawner._booting))
        finally:
            GpuDockerSpawner._booting -= 1
        raise StartRefused(500, f"your lab did not start within {self.boot_timeout} s; "
                                "try again, or ask an admin to check `invoke logs`", "timeout")

    def why_stopped(self, state: dict) -> str:
        """Docker's record of a stopped lab in plain words, e.g. "out of memory (...)"."""
        if state.get("OOMKilled"):
            limit = f" (memory limit {self.mem_limit} bytes)" if self.mem_limit else ""
            return f"out of memory{limit}"
        return f"exit code {state['ExitCode']}" if "ExitCode" in state else "it is gone"

    async def _fail_if_dead(self) -> None:
        try:
            info = await self.docker("inspect_container", self.object_id)
        except docker.errors.NotFound:
            info = None
        state = (info or {}).get("State") or {}
        if state.get("Running"):
            return
        raise StartRefused(500, f"your lab stopped while starting ({self.why_stopped(state)}); "
                                "try another profile, or ask an admin to check `invoke logs`",
                           "lab_died")

    async def poll(self):
        """None while the lab runs; else keep why it stopped, for the user, and remove it."""
        self.gpu_state.watch_faults(self.log)
        container = await self.get_object()
        if not container:
            if not self._spawn_pending and self.gpu_state.waited_before_restart(self.user.name):
                self.last_stop_reason = ("did not start: the hub restarted while you waited "
                                         "in line for a GPU; press Start to take a place in "
                                         "line again")
            return 0
        state = container.get("State") or {}
        if state.get("Running"):
            return None
        if not self._spawn_pending:  # a lab that stopped by itself, not one still starting
            why = self.why_stopped(state)
            self.last_stop_reason = f"stopped by itself: {why}"
            self.log.warning("The lab of %s stopped by itself: %s", self.user.name, why)
            await self.record("stopped", self.object_id, finished_at(state), why)
            await self._remove_quietly()
            self.kick_line()
        return f"ExitCode={state.get('ExitCode')}"

    def get_state(self):
        state = super().get_state()
        if self.last_stop_reason:
            state["last_stop_reason"] = self.last_stop_reason
        return state

    def load_state(self, state):
        super().load_state(state)
        self.last_stop_reason = state.get("last_stop_reason", "")

    async def _remove_quietly(self) -> None:
        try:
            found = await self.get_object()  # by name: also one whose start was cancelled
            if found:
                self.object_id = found["Id"]
                await self.remove_object()
        except Exception as err:  # the start error matters more than this one
            self.log.warning("Could not remove the failed lab of %s: %s", self.user.name, err)

    async def progress(self):
        # Asked for before JupyterHub called start(), every field below is still the last
        # start's (a GPU user would read "No GPU for this lab"): wait for this one's.
        while self._spawn_pending and not self._start_began:
            await asyncio.sleep(0.1)
        if self._said_stop_reason:
            yield {"progress": 10, "message": f"Your last lab "
                                              f"{self._said_stop_reason}"}
        notes = 0
        while True:
            async for event in self._progress_of_one_try():
                yield event
            # A GPU that fails under this start sends it back to choosing GPUs.
            while (self._spawn_pending and self._trying_gpus
                   and notes == len(self._gpu_fault_notes)):
                await asyncio.sleep(0.5)
            if notes == len(self._gpu_fault_notes):
                return
            for note in self._gpu_fault_notes[notes:]:
                yield {"progress": 15, "message": note}
            notes = len(self._gpu_fault_notes)

    async def _progress_of_one_try(self):
        said = ""
        while self._spawn_pending and self._choosing_gpus:
            waiter = self._waiter
            position = self.line.position(waiter) if waiter is not None else None
            if position is not None:
                message = waiting_message(position, self.line.typical_wait())
                if message != said:
                    said = message
                    yield {"progress": 20, "message": message}
            await asyncio.sleep(0.5)
        if self.gpu_ids:
            yield {"progress": 40, "message": f"GPUs granted: {', '.join(self.gpu_ids)}"}
        elif self.gpu_inventory:
            yield {"progress": 40, "message": "No GPU for this lab (CPU profile)"}
        # Until the lab has its start slot, say when it waits for one, and for how many.
        while (self.lab_start_concurrency and self._spawn_pending
               and self._start_slot in (StartSlot.NOT_YET, StartSlot.WAITING)):
            queue = self.start_slots
            # Nobody in line: the slot is this lab's already, on its way to it.
            if self._start_slot is StartSlot.WAITING and queue.waiting:
                message = (f"Waiting for a start slot ({queue.booting} starting, "
                           f"{queue.waiting} in line)")
                if message != said:
                    said = message
                    yield {"progress": 50, "message": message}
            await asyncio.sleep(0.5)

    async def stop(self, now=False):
        # Asked for by the user, an admin or the idle culler (JupyterHub does not say
        # which), or by the gpu-reclaimer, which leaves its reason for the user first.
        reason = take_reason(self.user.name, Path(self.stop_reasons_dir)) \
            if self.stop_reasons_dir else ""
        self.last_stop_reason = f"was stopped: {reason}" if reason else ""
        if reason:
            self.log.warning("Stopping the lab of %s: %s", self.user.name, reason)
        lab = self.object_id  # DockerSpawner forgets it in stop()
        if self.line_file:
            self._save_line()  # a Stop while waiting in line: out of the saved line too
        await super().stop(now=now)
        if lab:
            await self.record("stopped", lab, datetime.datetime.now(datetime.UTC),
                              reason or "stopped by the hub")
        self.kick_line()
        # With remove=True Docker deletes the container asynchronously; report "stopped"
        # only once it is gone, or an immediate Start fails on the container name. A start
        # this stop cancelled (a Stop, or the user deleted, while the lab booted) may have
        # made its container without telling DockerSpawner, which then removed nothing:
        # remove it here, so that no lab outlives its start or its user.
        deadline = asyncio.get_running_loop().time() + 30
        while (found := await self.get_object()) is not None:
            if asyncio.get_running_loop().time() > deadline:
                self.log.warning("Container of %s still present 30 s after stop", self.user.name)
                break
            if (found.get("State") or {}).get("Status") != "removing":
                await self._remove_quietly()
            await asyncio.sleep(0.2)
        self.gpu_ids = []


def docker_failure(err: Exception) -> StartRefused | None:
    """A start that failed on a call to Docker (or to the broker in front of it), as the
    user reads it; None for any other failure. JupyterHub would answer a bare 500 without a
    word (an API client) or the raw error. What Docker or the broker said stays in the hub's
    log: it can name host paths and the broker's rules, which are not the user's to read."""
    if isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout) or (
            isinstance(err, docker.errors.APIError) and err.status_code in (502, 503, 504)):
        return StartRefused(503, "Docker did not answer the hub; try again in a minute, or "
                                 "ask an admin to check `invoke status`", "docker_down")
    if not isinstance(err, docker.errors.APIError) or nvidia_refusal(str(err)) is not None:
        return None  # the NVIDIA toolkit's refusals are said by gpu_refused()
    if not str(err.explanation or "").startswith(names.BROKER_REFUSED):
        return StartRefused(500, "Docker could not create or start your lab; ask an admin to "
                                 "check `invoke logs`", "docker_error")
    if err.status_code == 507:  # WORK_QUOTA: the work volume could not move under the limit
        return StartRefused(507, "your work folder could not be put under its size limit "
                                 "(WORK_QUOTA); your files are kept where they were; ask an "
                                 "admin to check `invoke logs`", "work_folder")
    return StartRefused(500, "the hub's Docker broker refused a step of your lab's start; "
                             "ask an admin to check `invoke logs`", "broker_refused")


def serving_poll_interval(booting: int) -> float:
    """Seconds between tries to connect to a booting lab while ``booting`` labs boot."""
    return min(1.0, 0.05 * max(1, booting))


def dead_check_interval(booting: int) -> float:
    """Seconds between Docker inspects of a booting lab while ``booting`` labs boot: each
    lab at least every 5 s, and up to 20 labs booting, all together at most 4 a second."""
    return min(5.0, max(1.0, 0.25 * booting))


def finished_at(state: dict) -> datetime.datetime:
    """When Docker says the lab stopped (its zero time, or none: now)."""
    try:
        finished = parse_time(state.get("FinishedAt") or "")
    except ValueError:
        finished = None
    if finished is None or finished.year < 2000:
        return datetime.datetime.now(datetime.UTC)
    return finished

