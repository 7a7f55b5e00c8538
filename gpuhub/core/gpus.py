"""The GPU inventory: which NVIDIA devices labs may use, discovered on the host.

``invoke up`` builds the inventory on the host (``nvidia-smi``, or the ``GPU_DEVICES``
setting) and hands it to the hub as JSON in ``GPUHUB_GPU_INVENTORY``; the hub never
runs ``nvidia-smi`` itself (it has no GPUs and no driver inside its container).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from gpuhub.core.allocator import one_lab_per_gpu

# Where the hub keeps the inventory it was last given, on the hub-data volume.
INVENTORY_FILE = "gpu-inventory.json"

QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total",
         "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Gpu:
    """One device a lab can be given: a whole GPU or a MIG instance."""

    index: str
    uuid: str = ""
    name: str = "NVIDIA GPU"
    memory_mib: int = 0

    @property
    def device_id(self) -> str:
        """The ID handed to Docker's device request (UUID when known: stable across reboots)."""
        return self.uuid or self.index


def summary(gpus: list[Gpu]) -> str:
    """The inventory in a few words, e.g. "4 GPUs (4× Tesla T4)"; `invoke gpus` has the IDs."""
    if not gpus:
        return "no GPUs (CPU-only)"
    models: dict[str, int] = {}
    for gpu in gpus:
        models[gpu.name] = models.get(gpu.name, 0) + 1
    each = ", ".join(f"{count}× {name}" for name, count in models.items())
    return f"{len(gpus)} GPU{'s' if len(gpus) != 1 else ''} ({each})"


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
    chosen = []
    for dev in gpu_devices.split(","):
        if dev in by_key:
            chosen.append(by_key[dev])
        elif detected and not dev.startswith("MIG-"):
            # --query-gpu lists whole GPUs only, never MIG instances, so a MIG UUID
            # cannot be checked against it and is taken as given (below).
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
    return json.dumps([asdict(g) for g in gpus], separators=(",", ":"))


def from_json(text: str) -> list[Gpu]:
    """Read the inventory the hub receives; a broken value is a clear error, not a crash."""
    if not text.strip():
        return []
    try:
        items = json.loads(text)
        return [Gpu(**{k: item[k] for k in ("index", "uuid", "name", "memory_mib") if k in item})
                for item in items]
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"GPUHUB_GPU_INVENTORY is not a valid inventory ({err}): {text!r}") from None


def allow_growth(policy: str, gpu_allow_growth: str) -> bool:
    """Whether labs get TF_FORCE_GPU_ALLOW_GROWTH=true (GPU_ALLOW_GROWTH; auto: GPUs shared)."""
    return gpu_allow_growth == "yes" or (gpu_allow_growth == "auto"
                                         and not one_lab_per_gpu(policy))
