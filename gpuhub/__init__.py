"""gpuhub: a multi-user JupyterLab service on NVIDIA GPU servers, run with Docker Compose.

The package is imported in two places: by the Invoke tasks on the host (``gpuhub.tasks``)
and by ``jupyterhub_config.py`` inside the hub container (``gpuhub.hub.hubconfig``).
"""
