"""The documentation's pictures, taken by the e2e suite's browser from a real stack.

    GPUHUB_DOCS_SCREENSHOTS=1 nox -s e2e -- -k "test_docs_screenshots or test_gpu_page or test_admin_page_lists_every_user"

With the variable set, :func:`save` writes ``docs/images/<name>.png`` (one window size for
all, so the pictures match); without it, nothing is written, so an ordinary e2e run leaves
the repository as it was. Commit the new pictures after looking at them.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.stack import ROOT

DOCS_IMAGES = ROOT / "docs" / "images"
ENV = "GPUHUB_DOCS_SCREENSHOTS"
WINDOW = (1280, 720)


def wanted() -> bool:
    return os.environ.get(ENV, "") == "1"


def save(driver, name: str, folder: Path = DOCS_IMAGES) -> Path | None:
    """Save the browser's page as ``folder/name.png`` when GPUHUB_DOCS_SCREENSHOTS=1."""
    if not wanted():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(*WINDOW)
    path = folder / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise AssertionError(f"the browser could not save {path}")
    return path
