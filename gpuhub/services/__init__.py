"""Programs started from the hub image beside the hub: the GPU reclaimer, the user CLI
(`invoke adduser` and friends run it in the hub container), the backup helper and the
health check. They import the core, never the hub process's modules.
"""
