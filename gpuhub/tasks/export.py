"""Tasks that carry this deployment elsewhere: a zero-to-jupyterhub values file for Kubernetes."""

from __future__ import annotations

import os
from pathlib import Path

from invoke import task

from gpuhub.core.authconfig import discover_oidc
from gpuhub.tasks import z2jh
from gpuhub.tasks.deployment import fail, load_profiles
from gpuhub.tasks.project import load

DEFAULT_OUTPUT = "z2jh-values.yaml"


def write_text(path: Path, text: str, force: bool) -> None:
    """Write ``text`` to ``path`` (mode 0644); an existing file only with ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError:
        raise fail(f"{path} already exists; choose another --output, or --force to "
                   "replace it") from None
    except OSError as err:
        raise fail(f"cannot write {path}: {err.strerror}; choose another --output") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)


@task(help={"output": f"File to write (default: {DEFAULT_OUTPUT} in the current folder).",
            "force": "Replace the file if it exists."})
def export_z2jh(c, output=DEFAULT_OUTPUT, force=False):
    """Write a zero-to-jupyterhub Helm values file equivalent to these settings and profiles."""
    project = load()
    profiles = load_profiles(project)
    out = Path(output).resolve()
    if not out.parent.is_dir():
        raise fail(f"folder {out.parent} does not exist; create it or choose another --output")
    endpoints = None
    if project.settings.authenticator == "oidc":  # the provider's public configuration
        ca = project.settings.oidc_ca_file
        try:
            endpoints = discover_oidc(project.settings.oidc_issuer,
                                      str(project.path(ca)) if ca else None)
        except ValueError as err:
            raise fail(str(err)) from None
    write_text(out, z2jh.render(project.settings, profiles, endpoints), force)
    chart = z2jh.chart_version(project.settings.jupyterhub_version) or "(see the file)"
    print(f"wrote {out} for the jupyterhub Helm chart {chart}; its comments say what "
          "does not carry over to Kubernetes and what to do instead")
