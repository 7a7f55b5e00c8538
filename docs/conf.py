"""Sphinx configuration of gpuhub's documentation (MyST Markdown, the JupyterHub theme).

Built by `nox -s docs` with warnings as errors; Read the Docs builds it from
.readthedocs.yaml. The reference pages include fragments that tools/docsref.py writes from
the code at every build (docs/reference/_generated/, not in git).
"""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # gpuhub, tasks.py, harness and tools
sys.path.insert(0, str(DOCS / "_ext"))

import gpuhub  # noqa: E402

project = "gpuhub"
author = "gpuhub's maintainers"
copyright = "gpuhub's maintainers"
release = gpuhub.__version__
version = release

extensions = ["myst_parser", "gpuhub_reference"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "reference/_generated", "requirements.txt", "bench/*.json"]
# Links to #headings (and other-page.md#heading) resolve against headings of these levels;
# a missing one is a warning, so `-W` fails the build on it.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "deflist"]
highlight_language = "none"
suppress_warnings: list[str] = []

# JupyterHub's own theme (pydata-sphinx-theme underneath), as JupyterHub, TLJH and z2jh use;
# it always adds icon links to the Jupyter community forum and team compass.
html_theme = "jupyterhub_sphinx_theme"
html_title = f"gpuhub {release}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "logo": {"text": "gpuhub"},
}
# The theme brings sphinxext-opengraph: no social-card images (they need matplotlib).
ogp_social_cards = {"enable": False}
# No external network at build time: nothing fetched, nothing linked-checked outside.
linkcheck_ignore = [r"https?://.*"]
