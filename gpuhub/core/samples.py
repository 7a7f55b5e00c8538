"""The gpu-sampler's readings file (``names.GPU_SAMPLES_FILE``): its one format.

The sampler writes it (:func:`write_samples`); the hub's telemetry and the reclaimer read
it (:func:`read_samples`), which says plainly why there is no usable reading.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from gpuhub.core import names
from gpuhub.core.files import write_atomically

FORMAT_VERSION = 1
# A reading older than this many intervals (plus a margin) means the sampler stopped.
STALE_INTERVALS = 3


def read_samples(path: Path = Path(names.GPU_SAMPLES_FILE),
                 now: float | None = None) -> tuple[dict | None, str]:
    """The sampler's latest reading and the problem with it ("" when there is none).

    No reading (None) when the file is missing, unreadable, of another format, or stale;
    a reading with an empty GPU list and the driver's error when nvidia-smi failed.
    """
    now = time.time() if now is None else now
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, ("no reading yet: the gpu-sampler service has written none "
                      "(see `invoke status` and `docker compose logs gpu-sampler`)")
    except (OSError, ValueError) as err:
        return None, f"the gpu-sampler's readings cannot be read ({err})"
    if (not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION
            or not isinstance(doc.get("taken_at"), int | float)
            or not isinstance(doc.get("gpus"), list)):
        return None, "the gpu-sampler's readings are in a format this hub does not know"
    age = now - doc["taken_at"]
    if age > STALE_INTERVALS * float(doc.get("interval") or 5) + 10:
        return None, (f"the last reading is {int(age)} s old: the gpu-sampler service is "
                      "not running (see `invoke status`)")
    return doc, str(doc.get("error") or "")


def write_samples(path: Path, document: dict) -> None:
    """Replace the readings in one step: the hub never reads half a file."""
    write_atomically(path, json.dumps(document, separators=(",", ":")))
