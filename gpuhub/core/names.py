"""The names of a deployment's things, defined once: networks, containers, volumes, paths.

The hub creates labs and work volumes under these names, and the Docker broker allows
exactly these names, so the two cannot drift apart. Places that are not Python
(the compose files, the lab firewall's image) are checked against this module by
``tests/unit/test_names.py``.

Only the standard library: the Docker broker's image imports it without the hub's
dependencies.
"""

from __future__ import annotations

import hashlib
import string

from gpuhub.core.labels import GPUS as LABEL_GPUS
from gpuhub.core.labels import PROFILE as LABEL_PROFILE
from gpuhub.core.labels import PROJECT as LABEL_PROJECT
from gpuhub.core.labels import SINCE as LABEL_SINCE
from gpuhub.core.labels import USER as LABEL_USER

# Inside a lab.
LAB_HOME = "/home/jovyan"
WORK_MOUNT = f"{LAB_HOME}/work"
SHARED_MOUNT = f"{LAB_HOME}/shared"

# The compose services the hub talks to, by their names on the project's networks.
DOCKER_BROKER_SERVICE = "docker-proxy"
DOCKER_BROKER_PORT = 2375
DOCKER_BROKER_URL = f"tcp://{DOCKER_BROKER_SERVICE}:{DOCKER_BROKER_PORT}"
# How every refusal of the broker begins (the "message" of its answer): the hub tells a
# refused start from Docker's own errors by it.
BROKER_REFUSED = "refused by gpuhub docker-proxy"
LAB_FIREWALL_SERVICE = "lab-firewall"
# Where the lab-firewall image keeps gpuhub/labfirewall/service.py (its Dockerfile's COPY and CMD).
LAB_FIREWALL_SCRIPT = "/usr/local/lib/gpuhub/labfirewall.py"
# The service that keeps all labs under one memory limit (gpuhub/labfirewall/labmemory.py,
# in the lab-firewall image at LAB_MEMORY_SCRIPT).
LAB_MEMORY_SERVICE = "lab-memory"
LAB_MEMORY_SCRIPT = "/usr/local/lib/gpuhub/labmemory.py"
# Every service's Docker health check runs gpuhub/services/healthcheck.py: from the hub image
# (hub, proxy) or as a file of its own (lab-firewall and docker-proxy images). After a check
# passed, the next waits HEALTH_SETTLE seconds (that file says why); Docker's timeout for a
# check must be longer. Until a check passes (a container that just started) and after one
# failed, checks come every HEALTH_INTERVAL seconds: `invoke up` waits for each service to be
# healthy before it starts the next, so this is how soon it sees one that is. HEALTH_RETRIES
# failures in a row make a service unhealthy: about as long a silence as 3 checks 2 s apart
# were (Swarm replaces an unhealthy hub; compose only reports it).
HEALTHCHECK_SCRIPT = "/opt/gpuhub/gpuhub/services/healthcheck.py"
SERVICE_HEALTHCHECK_SCRIPT = "/usr/local/lib/gpuhub/healthcheck.py"
HEALTH_SETTLE = 15
HEALTH_INTERVAL = 1
HEALTH_RETRIES = 5
# Compose hands these to the hub, the broker and lab-memory (`invoke up` reads Docker's
# cgroup driver and version, and works out LABS_MEM_LIMIT in bytes).
LABS_CGROUP_PARENT_ENV = "GPUHUB_LABS_CGROUP_PARENT"
# The parent cgroup of the hub, the proxy and docker-proxy, whose CPU weight lab-memory keeps
# above Docker's own processes and the labs' (docker-compose.yml); unset: Docker's default.
SERVICES_CGROUP_PARENT_ENV = "GPUHUB_SERVICES_CGROUP_PARENT"
# The hub's services' oom_score_adj (docker-compose.yml), where the engine allows a negative
# one (`invoke up` probes it); 0 elsewhere.
SERVICES_OOM_SCORE_ENV = "GPUHUB_SERVICES_OOM_SCORE_ADJ"
SERVICES_OOM_SCORE = -500
LABS_MEMORY_ENV = "GPUHUB_LABS_MEMORY"
CGROUP_DRIVER_ENV = "GPUHUB_CGROUP_DRIVER"
CGROUP_VERSION_ENV = "GPUHUB_CGROUP_VERSION"

# Where the containers that hold the Docker socket have it: the Docker broker, or the hub
# itself with DOCKER_SOCKET_PROXY=false (docker-compose.docker-socket.yml) and in swarm mode.
DOCKER_SOCKET_MOUNT = "/var/run/docker.sock"

# The hub's folder in its image (jupyterhub/Dockerfile's WORKDIR).
HUB_DIR = "/srv/jupyterhub"
HUB_TEMPLATES_DIR = f"{HUB_DIR}/templates"  # jupyterhub/templates, gpuhub's pages
# PROFILES_FILE, where compose mounts it read-only in the hub and the Docker broker.
HUB_PROFILES_PATH = f"{HUB_DIR}/profiles.yaml"
# The admin's own JupyterHub settings (*.py, run after gpuhub's): the repository's folder,
# mounted read-only in the hub.
CONFIG_D_FOLDER = "jupyterhub_config.d"
HUB_CONFIG_D = f"{HUB_DIR}/{CONFIG_D_FOLDER}"
# Swarm mode: SWARM_HOMES as mounted in the hub, which creates users' folders there.
SWARM_HOMES_MOUNT = "/srv/gpuhub/homes"

# The hub's state (database, cookie secret, inventory, records) on the hub-data volume.
HUB_DATA_VOLUME = "hub-data"


def hub_data_volume(project: str) -> str:
    """The hub-data volume as compose (and `docker stack deploy`) name it."""
    return f"{project}_{HUB_DATA_VOLUME}"
HUB_DATA_DIR = f"{HUB_DIR}/data"
# In HUB_DATA_DIR: the SQLite database (without DATABASE_URL) and the cookie secret.
HUB_DATABASE_FILE = "jupyterhub.sqlite"
# What the hub database is to a hub image (gpuhub.services.hubdb check): no database yet,
# at its schema, an older JupyterHub's (`invoke up` migrates it), a newer one's (refused).
HUB_DB_EMPTY, HUB_DB_CURRENT, HUB_DB_OLDER, HUB_DB_NEWER = "empty", "current", "older", "newer"
# Where `invoke up` keeps the hub database as it was before it migrated it (in the project's
# folder): hub-db-<UTC time>-jupyterhub-<old>-to-<new>.sqlite (.jsonl for PostgreSQL).
UPGRADE_BACKUPS_DIR = "backups"
COOKIE_SECRET_FILE = "jupyterhub_cookie_secret"


def hub_database_url(data_dir, database_url: str = "") -> str:
    """DATABASE_URL, or SQLite on the hub-data volume."""
    return database_url or f"sqlite:///{data_dir}/{HUB_DATABASE_FILE}"
# Every lab's start and stop (gpuhub/core/usage.py), a file in HUB_DATA_DIR; `invoke backup`
# archives it as hub/<this name>.
USAGE_JOURNAL_FILE = "usage.jsonl"
# Who waits in line for a GPU (gpuhub/hub/gpuline.py), so that after a hub restart they are
# told their wait ended; a file in HUB_DATA_DIR.
GPU_LINE_FILE = "gpu-line.json"
# GPUs out of service after a fault (gpuhub/core/outofservice.py), a file in HUB_DATA_DIR;
# `invoke gpus --back` leaves its requests in GPU_BACK_DIR there, one file each.
GPU_OUT_OF_SERVICE_FILE = "gpu-out-of-service.json"
GPU_BACK_DIR = "gpu-back"
# Why the gpu-reclaimer stops a lab, one file per user, for the spawner's stop().
STOP_REASONS_DIR = "stop-reasons"
# The hub's admin service token (the user CLI in the hub container uses it).
ADMIN_TOKEN_FILE = "gpuhub-admin.token"
# `python3 -m gpuhub.services.usercli add NAME --if-missing` of a user who has a password
# already: nothing was changed (`invoke up` creates missing admins with it).
USERCLI_ALREADY = 3

# Secrets compose hands the hub (docker-compose.yml `secrets:`), in /run/secrets.
HUB_SECRETS_DIR = "/run/secrets"
PROXY_TOKEN_SECRET = "proxy_auth_token"
# The files under SECRETS_DIR that hold them (docker-compose.yml's `secrets:`):
# <project>-<name>.
PROXY_TOKEN_FILE = "proxy-token"
METRICS_TOKEN_FILE = "metrics-token"
METRICS_TOKEN_SECRET = "metrics_token"
# docker-compose.tls.yml (TLS_CERT and TLS_KEY set): the proxy's certificate and key.
TLS_CERT_SECRET = "tls_cert"
TLS_KEY_SECRET = "tls_key"
# docker-compose.login.yml (AUTHENTICATOR=ldap or oidc): the files the settings name.
LDAP_BIND_PASSWORD_SECRET = "ldap_bind_password"
LDAP_CA_SECRET = "ldap_ca"
OIDC_CLIENT_SECRET_SECRET = "oidc_client_secret"
OIDC_CA_SECRET = "oidc_ca"


def directory_network(project: str) -> str:
    """The network the hub alone reaches the directory or OIDC provider through (not the
    labs network, whose traffic the lab firewall limits)."""
    return f"{project}-directory"

# docker-proxy's own state, on a volume no other service mounts (a lab may not bind it:
# work volumes are <project>-home-*): the GPU inventory it was last given.
BROKER_DATA_VOLUME = "broker-data"
BROKER_DATA_DIR = "/srv/gpuhub-broker"

# The gpu-sampler service writes its readings of the GPUs here, on the gpu-telemetry
# volume (the hub mounts it read-only at the same path).
GPU_SAMPLER_SERVICE = "gpu-sampler"
TELEMETRY_VOLUME = "gpu-telemetry"
TELEMETRY_DIR = "/srv/gpuhub-telemetry"
GPU_SAMPLES_FILE = f"{TELEMETRY_DIR}/gpus.json"

# Labels Docker Compose writes on the services' containers.
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"

# Every label gpuhub writes on a lab container.
LAB_LABELS = (LABEL_PROJECT, LABEL_USER, LABEL_GPUS, LABEL_SINCE, LABEL_PROFILE)

# DockerSpawner's escaping of user names in container and volume names: every character
# but lowercase letters and digits becomes "-" and its UTF-8 bytes in hex.
_SAFE = frozenset(string.ascii_lowercase + string.digits)


def escape_user(name: str) -> str:
    """The user's name as DockerSpawner writes it into container and volume names."""
    return "".join(ch if ch in _SAFE else "".join(f"-{b:02x}" for b in ch.encode())
                   for ch in name).lower()


def labs_network(project: str) -> str:
    """The network labs (and the hub and proxy) share."""
    return f"{project}-labs"


def lab_container_prefix(project: str) -> str:
    return f"{project}-lab-"


def lab_container(project: str, user: str) -> str:
    """A user's lab container (DockerSpawner's name_template renders the same)."""
    return lab_container_prefix(project) + escape_user(user)


def lab_name_template() -> str:
    """DockerSpawner's ``name_template`` (its ``prefix`` is the project)."""
    return "{prefix}-lab-{username}"


def work_volume_prefix(project: str) -> str:
    return f"{project}-home-"


def work_volume(project: str, user: str) -> str:
    """A user's work volume, mounted at WORK_MOUNT."""
    return work_volume_prefix(project) + escape_user(user)


def work_volume_template(project: str) -> str:
    """The work volume as a DockerSpawner ``volumes`` template ({username} is escaped)."""
    return work_volume_prefix(project) + "{username}"


def work_move_container(project: str, suffix: str) -> str:
    """The broker's helper that moves a plain work volume into its quota'd folder
    (WORK_QUOTA; gpuhub/broker/workfolders.py). ``suffix``: the escaped user."""
    return f"{project}-work-move-{suffix}"


# The broker's answer about work folders (WORK_QUOTA): a path no Docker API has.
WORK_FOLDERS_PATH = "/gpuhub/work-folders"


IFNAMSIZ = 15  # the longest Linux interface name


def labs_cgroup_parent(project: str, driver: str) -> str:
    """The parent cgroup of every lab of ``project``, as Docker's CgroupParent names it."""
    return f"gpuhub-{project}-labs.slice" if driver == "systemd" else f"/gpuhub-{project}-labs"


def services_cgroup_parent(project: str, driver: str) -> str:
    """The parent cgroup of the hub's own services, as Docker's CgroupParent names it."""
    return (f"gpuhub-{project}-services.slice" if driver == "systemd"
            else f"/gpuhub-{project}-services")


def bridge_name(project: str) -> str:
    """The labs network's bridge interface: ``<project>-labs`` if it fits, else a hash.

    docker-compose.yml falls back to ``<project>-labs`` when `invoke` does not say, so
    a hand-run compose with a short project name (the default ``gpuhub``) agrees; the lab
    firewall's rules name this interface.
    """
    name = labs_network(project)
    if len(name) <= IFNAMSIZ:
        return name
    return "gpuhub-" + hashlib.sha256(project.encode()).hexdigest()[:IFNAMSIZ - len("gpuhub-")]
