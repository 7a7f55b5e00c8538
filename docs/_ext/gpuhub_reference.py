"""Sphinx extension: write the generated reference fragments before the sources are read."""

from pathlib import Path

from tools import docsref


def generate(app) -> None:
    docsref.write(Path(app.srcdir) / "reference" / "_generated")


def setup(app):
    app.connect("builder-inited", generate)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
