"""The GPU inventory: which NVIDIA devices labs may use, discovered on the host.

``invoke up`` builds the inventory on the host (``nvidia-smi``, or the ``GPU_DEVICES``
setting) and hands it to the hub as JSON in ``GPUHUB_GPU_INVENTORY``; the hub never
runs ``nvidia-smi`` itself (it has no GPUs and no driver inside its container).

MIG: ``--query-gpu`` lists whole GPUs only, so the MIG instances are read from
``nvidia-smi -L`` (:func:`with_mig`). A GPU in MIG mode is then not in the inventory
itself: its instances are, each a device of its own (index ``<gpu>:<mig>``, its
``MIG-…`` UUID, its parent GPU's UUID and its profile, e.g. ``1g.5gb``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from gpuhub.core.allocator import one_lab_per_gpu
from gpuhub.core.files import write_atomically

# Where the hub (on the hub-data volume) and docker-proxy (on its own broker-data volume)
# keep the inventory they were last given.
INVENTORY_FILE = "gpu-inventory.json"

QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total",
         "--format=csv,noheader,nounits"]
# The one listing that has MIG instances (R470+ drivers; see tests/gpu_double/README.md, MIG).
LIST = ["nvidia-smi", "-L"]
# What nvidia-smi reads in a GPU's fields after an Xid left it in error (a firmware crash,
# an uncorrectable ECC error) until a reset: it stays listed, but CUDA cannot use it.
RESET_REQUIRED = "[GPU requires reset]"

# A MIG profile as nvidia-smi names it: <compute slices>g.<memory>gb, with an optional
# compute-instance prefix ("1c.") and media-extension suffix ("+me", "-me", "+me.all", "+gfx").
MIG_PROFILE = re.compile(r"(?:\d+c\.)?\d+g\.(\d+)gb(?:[+-][a-z.]+)?")
_GPU_LINE = re.compile(r"GPU (\d+): (.*) \(UUID: (GPU-[^)\s]+)\)")
_MIG_LINE = re.compile(r"\s+MIG (\S+)\s+Device\s+(\d+): \(UUID: (MIG-[^)\s]+)\)")
# Where a MIG ID names a GPU instance and compute instance (R450/R460 drivers): R470+ refuse it.
OLD_MIG_ID = re.compile(r"MIG-GPU-[0-9A-Fa-f-]+/\d+/\d+")


@dataclass(frozen=True)
class Gpu:
    """One device a lab can be given: a whole GPU or a MIG instance.

    A MIG instance has its parent GPU's UUID in ``parent`` and its profile (``1g.5gb``) in
    ``mig_profile``; its ``memory_mib`` is the profile's nominal size (nvidia-smi's -L and
    --query-gpu do not give an instance's memory)."""

    index: str
    uuid: str = ""
    name: str = "NVIDIA GPU"
    memory_mib: int = 0
    parent: str = ""
    mig_profile: str = ""

    @property
    def device_id(self) -> str:
        """The ID handed to Docker's device request (UUID when known: stable across reboots)."""
        return self.uuid or self.index

    @property
    def is_mig(self) -> bool:
        return bool(self.mig_profile)


def mig_memory_mib(profile: str) -> int:
    """The memory a MIG profile's name promises (``1g.5gb``: 5120 MiB); 0 if not a profile.
    Nominal: an A100-40GB's 1g.5gb has 4864 MiB usable."""
    found = MIG_PROFILE.fullmatch(profile)
    return int(found.group(1)) * 1024 if found else 0


def summary(gpus: list[Gpu]) -> str:
    """The inventory in a few words, e.g. "4 GPUs (4× Tesla T4)"; `invoke gpus` has the IDs."""
    if not gpus:
        return "no GPUs (CPU-only)"
    models: dict[str, int] = {}
    for gpu in gpus:
        model = f"MIG {gpu.mig_profile}" if gpu.is_mig else gpu.name
        models[model] = models.get(model, 0) + 1
    each = ", ".join(f"{count}× {name}" for name, count in models.items())
    whole = sum(1 for g in gpus if not g.is_mig)
    slices = len(gpus) - whole
    said = [f"{n} {what}{'s' if n != 1 else ''}"
            for n, what in ((whole, "GPU"), (slices, "MIG instance")) if n]
    return f"{' and '.join(said)} ({each})"


def split_smi_line(line: str, trailing: int) -> tuple[str, str, str, list[str]]:
    """One line of nvidia-smi's ``--format=csv,noheader`` output for a query that starts with
    index, uuid, name and ends with ``trailing`` more fields: those four parts, stripped. A
    model name may itself hold ", " (nvidia-smi does not quote it): it is everything between
    the uuid and the trailing fields. A line with too few fields is a ValueError naming it."""
    raw = line.split(",")
    if len(raw) < 3 + trailing:
        raise ValueError(f"unexpected nvidia-smi line {line!r}")
    end = len(raw) - trailing
    return (raw[0].strip(), raw[1].strip(), ",".join(raw[2:end]).strip(),
            [part.strip() for part in raw[end:]])


def parse_nvidia_smi(csv_text: str) -> list[Gpu]:
    """Parse ``nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for line in csv_text.splitlines():
        if not line.strip():
            continue
        index, uuid, name, (memory,) = split_smi_line(line, trailing=1)
        try:
            memory_mib = int(float(memory.split()[0]))
        except (ValueError, IndexError):
            memory_mib = 0
        gpus.append(Gpu(index=index, uuid=uuid, name=name, memory_mib=memory_mib))
    return gpus


def parse_list(text: str) -> dict[str, list[Gpu]]:
    """The MIG instances in ``nvidia-smi -L``, by their parent GPU's UUID (GPUs without
    instances are absent). Each is named as libnvidia-container selects it: index
    ``<gpu>:<mig>``, and its MIG UUID. Lines of neither kind (a lost GPU's error) are skipped."""
    found: dict[str, list[Gpu]] = {}
    gpu: tuple[str, str, str] | None = None
    for line in text.splitlines():
        if m := _GPU_LINE.fullmatch(line.rstrip()):
            gpu = (m.group(1), m.group(2).strip(), m.group(3))
        elif (m := _MIG_LINE.fullmatch(line.rstrip())) and gpu is not None:
            index, name, parent = gpu
            profile = m.group(1)
            found.setdefault(parent, []).append(Gpu(
                index=f"{index}:{m.group(2)}", uuid=m.group(3), name=f"{name} MIG {profile}",
                memory_mib=mig_memory_mib(profile), parent=parent, mig_profile=profile))
        elif not line.startswith((" ", "\t")):
            gpu = None
    return found


def with_mig(gpus: list[Gpu], listed: str) -> list[Gpu]:
    """The inventory with each GPU in MIG mode replaced by its instances (``listed``: the
    output of ``nvidia-smi -L``): a lab is given an instance, never the partitioned GPU."""
    instances = parse_list(listed)
    result: list[Gpu] = []
    for gpu in gpus:
        result += instances.get(gpu.uuid, [gpu])
    return result


def smi_failure(stdout: str, stderr: str, returncode: int) -> str:
    """Why nvidia-smi failed, on one line: its own message wherever it wrote it (nvidia-smi
    writes its errors to stdout; the driver/library mismatch takes two lines)."""
    lines = [line.strip() for line in f"{stderr}\n{stdout}".splitlines() if line.strip()]
    return "; ".join(lines[:3])[:300] or f"exit code {returncode}"


def select(detected: list[Gpu], gpu_devices: str) -> list[Gpu]:
    """Apply the ``GPU_DEVICES`` setting (auto, none, or indices/UUIDs) to what was detected."""
    if gpu_devices == "none":
        return []
    if gpu_devices == "auto":
        return list(detected)
    by_key = {g.index: g for g in detected} | {g.uuid: g for g in detected if g.uuid}
    partitioned = {g.parent: g.index.split(":")[0] for g in detected if g.is_mig}
    chosen = []
    for dev in gpu_devices.split(","):
        if dev in by_key:
            chosen.append(by_key[dev])
        elif dev in partitioned or dev in partitioned.values():
            index = partitioned.get(dev, dev)
            mine = ", ".join(g.index for g in detected if g.index.startswith(f"{index}:"))
            raise ValueError(
                f"GPU_DEVICES names GPU {dev!r}, which is in MIG mode: a lab is given one of "
                f"its MIG instances, not the GPU; name those ({mine}) or their MIG-… UUIDs "
                "in GPU_DEVICES in .env")
        elif detected:
            known = ", ".join(g.index for g in detected)
            raise ValueError(
                f"GPU_DEVICES names {dev!r}, but nvidia-smi lists only GPUs {known}; "
                "fix GPU_DEVICES in .env"
            )
        elif dev.startswith(("GPU-", "MIG-")):
            chosen.append(Gpu(index=str(len(chosen)), uuid=dev))
        else:
            chosen.append(Gpu(index=dev))
    return chosen


def to_json(gpus: list[Gpu]) -> str:
    # A whole GPU's entry stays as it was before MIG (no empty parent, mig_profile).
    return json.dumps([{k: v for k, v in asdict(g).items() if v or k in _WHOLE_GPU_FIELDS}
                       for g in gpus], separators=(",", ":"))


_WHOLE_GPU_FIELDS = ("index", "uuid", "name", "memory_mib")


def from_json(text: str) -> list[Gpu]:
    """Read the inventory the hub receives; a broken value is a clear error, not a crash."""
    if not text.strip():
        return []
    try:
        items = json.loads(text)
        fields = ("index", "uuid", "name", "memory_mib", "parent", "mig_profile")
        return [Gpu(**{k: item[k] for k in fields if k in item}) for item in items]
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"GPUHUB_GPU_INVENTORY is not a valid inventory ({err}): {text!r}") from None


def remembered(given: str, saved: Path) -> list[Gpu]:
    """The inventory as `invoke up` gave it (then kept in ``saved``), else as last given.

    A hand-run `docker compose up --force-recreate` does not know the inventory; the hub
    and docker-proxy then keep the one `invoke up` discovered, instead of going CPU-only
    (the hub) or refusing every GPU lab (docker-proxy). A broken value, given or saved,
    is a ValueError; nothing is saved then.
    """
    if given.strip():
        inventory = from_json(given)
        write_atomically(saved, given)
        return inventory
    return from_json(saved.read_text()) if saved.exists() else []


def allow_growth(policy: str, gpu_allow_growth: str) -> bool:
    """Whether labs get TF_FORCE_GPU_ALLOW_GROWTH=true (GPU_ALLOW_GROWTH; auto: GPUs shared)."""
    return gpu_allow_growth == "yes" or (gpu_allow_growth == "auto"
                                         and not one_lab_per_gpu(policy))
