"""The JupyterHub process: its configuration, spawners, authenticators, pages and telemetry.

Runs only in the hub image (``jupyterhub_config.py`` imports ``gpuhub.hub.hubconfig``).
"""
