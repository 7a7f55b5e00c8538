"""JupyterHub configuration for gpuhub: validate the settings, then apply them.

All logic lives in the importable, unit-tested ``gpuhub`` package.
"""

import logging
import os
import sys
from pathlib import Path

from gpuhub.core import names
from gpuhub.core.settings import SettingsError, validate
from gpuhub.hub.gpuline import roll_over
from gpuhub.hub.hubconfig import apply_config, check_docker_access, load_admin_config
from gpuhub.hub.hubmodes import hub_mode
from gpuhub.hub.jupyterhubfixes import install as install_jupyterhub_fixes
from gpuhub.hub.telemetry import install as install_telemetry
from gpuhub.hub.workfolders import work_use

c = get_config()  # noqa: F821 (provided by JupyterHub)
install_jupyterhub_fixes()

try:
    settings = validate(os.environ)
except SettingsError as err:
    sys.exit(f"gpuhub: invalid settings, the hub will not start:\n{err}")

try:
    check_docker_access(settings, os.environ)
    work_folders = work_use(settings, os.environ)
    apply_config(c, settings, work_use=work_folders)
    # Then the admin's own settings (jupyterhub_config.d/*.py), which may override gpuhub's.
    for name in load_admin_config(c):
        logging.getLogger("gpuhub").info("Loaded the admin's %s", name)
except ValueError as err:  # Docker not reached as set, bad GPU pins, inventory or profiles
    sys.exit(f"gpuhub: {err}")

# The GPU board (admin page, metrics) and the spawner's counters, in the hub's registry.
install_telemetry(hub_mode(settings).board_source, work_folders)

# Once per hub start: labs that stopped while the hub was down close their records, and
# the last hub's line for GPUs is put aside (its users are told their wait ended).
hub_mode(settings).recover_usage(Path(names.HUB_DATA_DIR) / names.USAGE_JOURNAL_FILE,
                                 logging.getLogger("gpuhub"))
roll_over(Path(names.HUB_DATA_DIR) / names.GPU_LINE_FILE)
