"""Script what the NVIDIA test double reports: GPU utilisation, memory use, processes.

Tests write ``gpus.tsv`` in the double's state directory on the host. The host-side
fake ``nvidia-smi`` reads it there, and every GPU container reads the same directory,
which the fake hook bind-mounts read-only at ``CONTAINER_STATE_DIR``: both sides
always agree, also for containers started before the state changed. A GPU the file
does not mention is idle (0 %, 0 MiB). The format is in tests/gpu_double/README.md.

    gpu_state.write({uuid: (85, 9216)}, [(uuid, 12345, 9000, "python")])
    ...
    gpu_state.clear()
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

# The fake hook, the fake nvidia-smi and install.sh spell these too (checked by a unit test).
STATE_DIR = "/var/lib/gpuhub-gpu-double/state"
CONTAINER_STATE_DIR = "/etc/gpuhub-gpu-double-state"
STATE_FILE = "gpus.tsv"


def host_state_dir() -> Path:
    """The host's state directory: ``$GPUHUB_GPU_DOUBLE_STATE`` as for the hook, or the default."""
    return Path(os.environ.get("GPUHUB_GPU_DOUBLE_STATE", STATE_DIR))


def _field(value: object, what: str) -> str:
    text = str(value)
    if not text or any(c in text for c in "\t\r\n"):
        raise ValueError(f"{what} {value!r} must be non-empty and free of tabs and newlines")
    return text


def _count(value: int, what: str, top: int | None = None) -> int:
    if not isinstance(value, int) or value < 0 or (top is not None and value > top):
        limit = f"0..{top}" if top is not None else ">= 0"
        raise ValueError(f"{what} {value!r} must be an int {limit}")
    return value


def write(
    gpus: dict[str, tuple[int, int]],
    processes: Iterable[tuple[str, int, int, str]] = (),
    state_dir: str | os.PathLike | None = None,
    lost: Iterable[str] = (),
    gone: Iterable[str] = (),
    inforom: Iterable[str] = (),
    reset: Iterable[str] = (),
    driver: str = "",
    toolkit: str = "",
) -> Path:
    """Replace the state atomically: ``{uuid: (utilisation %, memory used MiB)}``,
    ``[(gpu uuid, host pid, used memory MiB, process name)]`` and the UUIDs of GPUs that
    are ``lost`` (fallen off the bus, as nvidia-smi then reports them) or ``gone`` (the
    driver no longer sees them: removed, or replaced by a GPU with another UUID); return the
    file. ``inforom``: GPUs whose infoROM is corrupted (nvidia-smi exits 14 with valid data).
    ``reset``: GPUs in error after an Xid until reset (their readings "[GPU requires reset]").
    ``driver``: "mismatch", "hang" or "nvml-lost" (from now on, for containers started
    before), which fail every nvidia-smi query (tests/gpu_double/README.md, Faults).
    ``toolkit``: the version the fake nvidia-ctk reports (default 1.19.0)."""
    lines = ["# GPU state of the NVIDIA test double, written by tests/support/gpu_state.py"]
    for uuid, (util, used) in gpus.items():
        lines.append(f"gpu\t{_field(uuid, 'GPU UUID')}\t{_count(util, 'utilisation', 100)}"
                     f"\t{_count(used, 'memory used')}")
    for uuid, pid, used, name in processes:
        lines.append(f"proc\t{_field(uuid, 'GPU UUID')}\t{_count(pid, 'pid')}"
                     f"\t{_count(used, 'used memory')}\t{_field(name, 'process name')}")
    for uuid in lost:
        lines.append(f"fault\t{_field(uuid, 'GPU UUID')}\tlost")
    for uuid in gone:
        lines.append(f"fault\t{_field(uuid, 'GPU UUID')}\tgone")
    for uuid in inforom:
        lines.append(f"fault\t{_field(uuid, 'GPU UUID')}\tinforom")
    for uuid in reset:
        lines.append(f"fault\t{_field(uuid, 'GPU UUID')}\treset")
    if driver == "nvml-lost":
        lines.append(f"driver\tnvml-lost\t{int(time.time())}")
    elif driver in ("mismatch", "hang"):
        lines.append(f"driver\t{driver}")
    elif driver:
        raise ValueError(f"driver state {driver!r}: use mismatch, hang or nvml-lost")
    if toolkit:
        lines.append(f"toolkit\t{_field(toolkit, 'toolkit version')}")
    directory = Path(state_dir) if state_dir is not None else host_state_dir()
    # Never replace the directory itself: GPU containers have it bind-mounted.
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{STATE_FILE}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
            os.fchmod(f.fileno(), 0o644)  # the labs' users read it through the bind mount
        os.replace(tmp, directory / STATE_FILE)
    except BaseException:
        os.unlink(tmp)
        raise
    return directory / STATE_FILE


def clear(state_dir: str | os.PathLike | None = None) -> None:
    """Remove the state: every GPU is idle again, no processes."""
    directory = Path(state_dir) if state_dir is not None else host_state_dir()
    (directory / STATE_FILE).unlink(missing_ok=True)
