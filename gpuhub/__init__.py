"""gpuhub: a multi-user JupyterLab service on NVIDIA GPU servers, run with Docker Compose.

One sub-package per place its code runs (docs/explanation/architecture.md): ``core`` (shared
by all), ``tasks`` (the admin's host), ``hub`` (the JupyterHub process), ``services`` (beside
the hub, from its image), ``broker``, ``sampler`` and ``labfirewall`` (their own containers).
What each may import is checked by ``nox -s lint``.
"""

__version__ = "0.13.0.dev0"  # the one place; CHANGELOG.md says what each release asks
