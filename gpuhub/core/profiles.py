"""Spawn profiles from ``profiles.yaml``, in the shape of zero-to-jupyterhub's profileList.

Each profile: ``display_name`` (required), ``slug``, ``description``, ``default``,
``image``, ``gpus``, ``gpu_slice`` (the ``gpus`` are MIG instances of this profile, e.g.
``1g.5gb``, as ``nvidia-smi -L`` names them; without it, whole GPUs), ``cpu_limit``,
``mem_limit``, ``max_age`` (a lab older than this
is stopped, e.g. ``12h``; see gpuhub.services.reclaim), and in swarm mode ``placement``
(Swarm constraints such as ``node.labels.gpu == a100``). The list becomes the spawn form, and
:meth:`Profiles.resolve` is the server-side check of what a user submitted: only a known
profile slug is accepted, so a hand-crafted POST cannot pick another image or more GPUs
or memory than a profile allows.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from gpuhub.core.gpus import MIG_PROFILE
from gpuhub.core.lablimits import parse_memory

# Every field a profile may have, and what it means (the documentation's profiles reference
# is generated from this).
FIELD_HELP = {
    "display_name": "Required. The profile's name on the spawn form; a GPU profile whose name "
                    "does not say its size gets \"(N GPU)\" added.",
    "slug": "The profile's id (lowercase letters, digits and '-'); derived from display_name "
            "if absent. It names the profile in the metrics, GPU_LIMITS messages and records.",
    "description": "One line under the name on the spawn form.",
    "default": "true on at most one profile: the one selected on the form.",
    "image": "The lab image for this profile (default: LAB_IMAGE); `invoke up` pulls it.",
    "gpus": "How many GPUs the lab gets (0: CPU only); with gpu_slice, how many MIG instances.",
    "gpu_slice": "The gpus are MIG instances of this profile, as `nvidia-smi -L` names it "
                 "(e.g. 1g.5gb); without it, whole GPUs.",
    "cpu_limit": "CPUs the lab may use (a number above 0); default LAB_CPU_LIMIT.",
    "mem_limit": "The lab's memory limit, a size with a unit (16G); wins over LAB_MEM_LIMIT.",
    "max_age": "A lab older than this is stopped, busy or idle, its files kept: 12h, 90m, 2d, "
               "45s. Absent: no time limit.",
    "placement": "Swarm mode: a list of Swarm constraints such as node.labels.gpu == a100 "
                 "(ignored in compose mode).",
}
FIELDS = set(FIELD_HELP)
_DURATION_RE = re.compile(r"(\d+)\s*([smhd])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Swarm placement constraints, e.g. node.labels.gpu == a100 (ignored in compose mode).
_CONSTRAINT_RE = re.compile(r"^node\.[A-Za-z0-9_.-]+\s*(==|!=)\s*\S+$")


class ProfileError(ValueError):
    """profiles.yaml is wrong; the message names the file, profile, field and fix."""


class ProfileRejected(ValueError):
    """A submitted spawn choice is not allowed; the message is for the user."""


@dataclass(frozen=True)
class Profile:
    slug: str
    display_name: str
    description: str = ""
    default: bool = False
    image: str | None = None
    gpus: int = 0
    cpu_limit: float | None = None
    mem_limit: str | None = None
    placement: tuple[str, ...] = ()
    max_age: int | None = None  # seconds
    gpu_slice: str = ""  # MIG profile of the GPUs asked for ("": whole GPUs)


def parse_duration(value) -> int:
    """``12h``, ``90m``, ``2d``, ``45s`` or whole seconds, as seconds (at least 1)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    found = _DURATION_RE.fullmatch(value.strip().lower()) if isinstance(value, str) else None
    if not found or int(found.group(1)) == 0:
        raise ValueError("must be a duration such as 12h, 90m, 2d or 45s (above 0)")
    return int(found.group(1)) * _DURATION_UNITS[found.group(2)]


def _slugify(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "profile"


def _profile(item, where: str) -> Profile:
    if not isinstance(item, dict):
        raise ProfileError(f"{where}: each profile must be a mapping with display_name, got {item!r}")
    name = item.get("display_name")
    named = isinstance(name, str) and bool(name.strip())
    if named:  # name the profile in every error below, the misspelled-field one too
        where = f"{where} ({name!r})"
    unknown = set(item) - FIELDS
    if unknown:
        raise ProfileError(f"{where}: unknown field(s) {sorted(unknown, key=str)}; allowed: "
                           f"{', '.join(sorted(FIELDS))}. Maybe misspelled?")
    if not named:
        raise ProfileError(f"{where}: display_name is required (a non-empty string)")
    gpus = item.get("gpus", 0)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
        raise ProfileError(f"{where}: gpus must be a whole number 0 or more, got {gpus!r}")
    gpu_slice = item.get("gpu_slice", "")
    if gpu_slice and not (isinstance(gpu_slice, str) and MIG_PROFILE.fullmatch(gpu_slice)):
        raise ProfileError(f"{where}: gpu_slice must be a MIG profile as `nvidia-smi -L` names "
                           f"it, such as 1g.5gb or 3g.40gb, got {gpu_slice!r}")
    if gpu_slice and not gpus:
        raise ProfileError(f"{where}: gpu_slice {gpu_slice!r} needs gpus: 1 (or more): the "
                           "number of MIG instances of that size")
    cpu = item.get("cpu_limit")
    if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, (int, float))
                            or not math.isfinite(cpu) or cpu <= 0):
        raise ProfileError(f"{where}: cpu_limit must be a number of CPUs above 0, got {cpu!r}")
    mem = item.get("mem_limit")
    if mem is not None:
        try:  # the settings' own parser: a size passes (or fails) in both alike
            mem = parse_memory(mem)
        except ValueError as err:
            raise ProfileError(f"{where}: mem_limit {err}, got {mem!r}") from None
    max_age = item.get("max_age")
    if max_age is not None:
        try:
            max_age = parse_duration(max_age)
        except ValueError as err:
            raise ProfileError(f"{where}: max_age {err}, got {max_age!r}") from None
    slug = item.get("slug") or _slugify(str(name))
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", str(slug)):
        raise ProfileError(f"{where}: slug must be lowercase letters, digits and '-', got {slug!r}")
    default = item.get("default", False)
    if not isinstance(default, bool):  # bool("false") is True: a quoted value must not pass
        raise ProfileError(f"{where}: default must be true or false, got {default!r}")
    image = item.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise ProfileError(f"{where}: image must be an image name, got {image!r}")
    placement = item.get("placement") or []
    if not isinstance(placement, list) or not all(
            isinstance(x, str) and _CONSTRAINT_RE.fullmatch(x.strip()) for x in placement):
        raise ProfileError(f"{where}: placement must be a list of Swarm constraints such as "
                           f"'node.labels.gpu == a100', got {placement!r}")
    return Profile(slug=str(slug), display_name=str(name).strip(),
                   description=str(item.get("description") or ""),
                   default=default, image=image, gpus=gpus, gpu_slice=gpu_slice or "",
                   cpu_limit=float(cpu) if cpu is not None else None,
                   mem_limit=mem, max_age=max_age,
                   placement=tuple(x.strip() for x in placement))


class Profiles:
    """The validated profile list."""

    def __init__(self, profiles: list[Profile], source: str = "profiles.yaml"):
        if not profiles:
            raise ProfileError(f"{source}: define at least one profile")
        slugs = [p.slug for p in profiles]
        dupes = sorted({s for s in slugs if slugs.count(s) > 1})
        if dupes:
            raise ProfileError(f"{source}: slug(s) {dupes} used twice; give each profile "
                               "its own slug")
        defaults = [p.display_name for p in profiles if p.default]
        if len(defaults) > 1:
            raise ProfileError(f"{source}: more than one profile has default: true "
                               f"({', '.join(map(repr, defaults))}); keep it on one")
        self.profiles = profiles

    @classmethod
    def from_yaml(cls, text: str, source: str = "profiles.yaml") -> Profiles:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ProfileError(f"{source}: not valid YAML: {err}") from None
        if isinstance(data, dict) and "profiles" in data:
            data = data["profiles"]
        if not isinstance(data, list):
            raise ProfileError(f"{source}: expected a list of profiles (or `profiles:` list)")
        return cls([_profile(item, f"{source}: profile {i + 1}") for i, item in enumerate(data)],
                   source)

    @classmethod
    def from_file(cls, path: Path) -> Profiles:
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise ProfileError(f"cannot read profiles file {str(path)!r}: {err.strerror}; "
                               "set PROFILES_FILE to an existing file") from None
        return cls.from_yaml(text, str(path))

    def usable(self, gpu_count: int, slices: dict[str, int] | None = None) -> Profiles:
        """Only the profiles this host can serve (a CPU-only host hides GPU profiles).

        ``slices``: how many devices of each kind the host has (``""``: whole GPUs, else a
        MIG profile); None: ``gpu_count`` whole GPUs."""
        have = {"": gpu_count} if slices is None else slices
        fitting = [p for p in self.profiles if p.gpus <= have.get(p.gpu_slice, 0)]
        if not fitting or len(fitting) == len(self.profiles):
            return self
        if not any(p.default for p in fitting):
            fitting[0] = Profile(**{**fitting[0].__dict__, "default": True})
        return Profiles(fitting)

    @property
    def default(self) -> Profile:
        return next((p for p in self.profiles if p.default), self.profiles[0])

    def by_slug(self, slug: str) -> Profile | None:
        return next((p for p in self.profiles if p.slug == slug), None)

    def resolve(self, user_options: dict | None) -> Profile:
        """The profile a spawn request chose; reject anything but a known profile slug."""
        options = dict(user_options or {})
        extra = set(options) - {"profile"}
        if extra:
            raise ProfileRejected(f"only a profile can be chosen; not allowed: {sorted(extra)}")
        if "profile" not in options:
            return self.default
        slug = options["profile"]
        profile = self.by_slug(slug) if isinstance(slug, str) else None
        if profile is None:
            known = ", ".join(p.slug for p in self.profiles)
            raise ProfileRejected(f"unknown profile {slug!r}; choose one of: {known}")
        return profile

    def options_form(self, free: int | None = None, total: int = 0,
                     kinds: dict[str, tuple[int, int]] | None = None) -> str:
        """The spawn form (empty with one profile: JupyterHub then skips the form).

        ``free`` of ``total`` GPUs are held by no lab right now; each GPU profile says so
        ("1 GPU — 3 of 4 free"). None: not known, not said. ``kinds``: (free, total) per
        kind of device ("": whole GPUs, else a MIG profile), which then wins: a profile
        counts only the devices it may be given.
        """
        if len(self.profiles) < 2:
            return ""
        default = self.default.slug
        rows = []
        for p in self.profiles:
            checked = " checked" if p.slug == default else ""
            size = f"{p.gpus} GPU" + ("s" if p.gpus != 1 else "") if p.gpus else "CPU only"
            if p.gpu_slice:
                size = f"{p.gpus}× MIG {p.gpu_slice}"
            # "1 GPU (1 GPU)" said it twice: the size only when the name does not say it.
            said = "" if size.lower() in p.display_name.lower() else f" ({size})"
            if p.gpus and kinds is not None and free is not None:
                have, of = kinds.get(p.gpu_slice, (0, 0))
                said += f" — {have} of {of} free"
            elif p.gpus and free is not None:
                said += f" — {free} of {total} free"
            rows.append(
                f'<label class="gpuhub-profile" style="display:block;margin:0.5em 0">'
                f'<input type="radio" name="profile" value="{html.escape(p.slug)}"'
                f' id="profile-{html.escape(p.slug)}"{checked}> '
                f"<strong>{html.escape(p.display_name)}</strong>{html.escape(said)}"
                + (f"<br><small>{html.escape(p.description)}</small>" if p.description else "")
                + "</label>")
        return "\n".join(rows)

    @staticmethod
    def options_from_form(formdata: dict) -> dict:
        values = formdata.get("profile") or []
        return {"profile": values[0]} if values else {}

    def images(self, default_image: str) -> list[str]:
        """Every image a spawn may use, default first, no duplicates."""
        seen: list[str] = [default_image]
        for p in self.profiles:
            if p.image and p.image not in seen:
                seen.append(p.image)
        return seen
