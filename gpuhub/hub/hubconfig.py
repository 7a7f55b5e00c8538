"""Apply gpuhub settings to JupyterHub's traitlets ``Config``.

``jupyterhub_config.py`` calls :func:`apply_config`. Each ``update_*`` function owns one
concern and only *sets* values (never appends or mutates), so applying twice is harmless
and every function can be tested against a bare ``traitlets.config.Config()``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from gpuhub.core import gpus as gpu_inventory
from gpuhub.core import lablimits, names
from gpuhub.core.authconfig import auth_config, discover_oidc
from gpuhub.core.files import read_or_create_secret
from gpuhub.core.hubsqlite import write_ahead
from gpuhub.core.labels import PROJECT as LABEL_PROJECT
from gpuhub.core.profiles import Profiles
from gpuhub.core.settings import Settings
from gpuhub.hub import origins, workfolders
from gpuhub.hub.hubmodes import hub_mode
from gpuhub.hub.origins import update_origins
from gpuhub.hub.workfolders import WorkUse

DATA_DIR = Path(names.HUB_DATA_DIR)
PROFILES_PATH = Path(names.HUB_PROFILES_PATH)
TEMPLATES = Path(names.HUB_TEMPLATES_DIR)  # jupyterhub/templates in the hub image
SECRETS_DIR = Path(names.HUB_SECRETS_DIR)  # compose's secrets: the proxy and metrics tokens
# Where docker-compose.tls.yml mounts TLS_CERT and TLS_KEY in the proxy container.
PROXY_TLS_CERT = f"{names.HUB_SECRETS_DIR}/{names.TLS_CERT_SECRET}"
PROXY_TLS_KEY = f"{names.HUB_SECRETS_DIR}/{names.TLS_KEY_SECRET}"
LAB_HOME = names.LAB_HOME
ADMIN_SERVICE = "gpuhub-admin"
ADMIN_TOKEN_FILE = names.ADMIN_TOKEN_FILE
METRICS_SERVICE = "prometheus"
HUB_SERVICE_HOST = "hub"  # the compose service name, resolvable on the labs network
# How docker-compose.yml points the hub at docker-proxy (DOCKER_SOCKET_PROXY=true).
DOCKER_PROXY_URL = names.DOCKER_BROKER_URL
HUB_DOCKER_SOCKET = Path(names.DOCKER_SOCKET_MOUNT)  # where the socket is mounted, if it is


def read_token_file(path: Path, what: str) -> str:
    """A token compose hands the hub as a secret file; a clear error if it is missing."""
    try:
        token = Path(path).read_text().strip()
    except OSError:
        token = ""
    if not token:
        raise ValueError(f"the {what} {str(path)!r} is missing or empty; start the stack "
                         "with `invoke up`, which creates it")
    return token


def check_docker_access(settings: Settings, env: Mapping[str, str],
                        socket: Path = HUB_DOCKER_SOCKET) -> None:
    """The hub reaches Docker the way DOCKER_SOCKET_PROXY says; else a ValueError saying how.

    Compose run by hand with the wrong files would otherwise start a hub that fails at
    the first spawn, or one that holds the socket although the settings say it must not.
    """
    docker_host = env.get("DOCKER_HOST", "")
    if settings.docker_socket_proxy:
        if docker_host != DOCKER_PROXY_URL:
            raise ValueError(f"DOCKER_SOCKET_PROXY=true, but the hub's DOCKER_HOST is "
                             f"{docker_host!r}, not {DOCKER_PROXY_URL!r}: start it with "
                             "`invoke up` (by hand: without docker-compose.docker-socket.yml)")
        if socket.exists():
            raise ValueError(f"DOCKER_SOCKET_PROXY=true, but the hub has the Docker socket "
                             f"{socket}: start it with `invoke up` (by hand: without "
                             "docker-compose.docker-socket.yml)")
    elif not docker_host and not socket.exists():
        raise ValueError("DOCKER_SOCKET_PROXY=false, but the hub has no Docker socket: start "
                         "it with `invoke up` (by hand: add -f docker-compose.docker-socket.yml)")


def update_hub(c, settings: Settings, data_dir: Path, secrets_dir: Path = SECRETS_DIR) -> None:
    """Hub process: where state lives, how labs reach the hub, logging."""
    c.JupyterHub.hub_ip = "0.0.0.0"
    c.JupyterHub.hub_connect_ip = HUB_SERVICE_HOST
    c.JupyterHub.db_url = names.hub_database_url(data_dir, settings.database_url)
    if not settings.database_url:
        write_ahead(data_dir / names.HUB_DATABASE_FILE)
    c.JupyterHub.cookie_secret_file = str(data_dir / names.COOKIE_SECRET_FILE)
    # The proxy is its own compose service (routes survive hub restarts).
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = "http://proxy:8001"
    c.ConfigurableHTTPProxy.auth_token = read_token_file(secrets_dir / names.PROXY_TOKEN_SECRET, "proxy token")
    c.JupyterHub.log_level = settings.log_level
    # gpuhub's pages: the hub's own, each with a little more (jupyterhub/templates).
    c.JupyterHub.template_paths = [str(TEMPLATES)]
    # Labs keep running when the hub restarts; the hub reattaches to them from its DB.
    c.JupyterHub.cleanup_servers = False


def update_tls(c, settings: Settings) -> None:
    """The public scheme: https when the proxy serves TLS_CERT, and then Secure cookies."""
    if not settings.tls_cert:
        c.JupyterHub.bind_url = "http://:8000"
        return
    # JupyterHub rewrites an https bind_url to http unless ssl_cert is set. The proxy, not
    # the hub, terminates TLS: these are its paths, and the hub never opens them (it does
    # not start the proxy), but they make bind_url and the URLs it generates https.
    c.JupyterHub.ssl_cert = PROXY_TLS_CERT
    c.JupyterHub.ssl_key = PROXY_TLS_KEY
    c.JupyterHub.bind_url = "https://:8000"
    # Login, session and _xsrf cookies (JupyterHub copies cookie_options to the _xsrf
    # cookie) never travel over plain HTTP, whatever the proxy's headers say.
    c.JupyterHub.tornado_settings = {"cookie_options": {"secure": True}}


def update_auth(c, settings: Settings, secrets_dir: Path = SECRETS_DIR,
                discover=None) -> None:
    """The login method AUTHENTICATOR names (auth_config), and its secrets, read from the
    files compose mounts: never from the settings or the environment."""
    endpoints = None
    if settings.authenticator == "oidc":
        ca_file = str(secrets_dir / names.OIDC_CA_SECRET) if settings.oidc_ca_file else None
        endpoints = (discover or discover_oidc)(settings.oidc_issuer, ca_file)
    for section, traits in auth_config(settings, secrets_dir, endpoints).items():
        for trait, value in traits.items():
            setattr(c[section], trait, value)
    if settings.authenticator == "ldap" and settings.ldap_bind_dn:
        c.LDAPAuthenticator.lookup_dn_search_password = read_token_file(
            secrets_dir / names.LDAP_BIND_PASSWORD_SECRET,
            "LDAP bind password (LDAP_BIND_PASSWORD_FILE)")
    elif settings.authenticator == "oidc":
        c.GenericOAuthenticator.client_secret = read_token_file(
            secrets_dir / names.OIDC_CLIENT_SECRET_SECRET,
            "OIDC client secret (OIDC_CLIENT_SECRET_FILE)")


def update_spawner(c, settings: Settings, services_parent: str = "") -> None:
    """One DockerSpawner container per user on the labs network, removed on stop."""
    project = settings.compose_project_name
    c.JupyterHub.spawner_class = "gpuhub.hub.spawner.GpuDockerSpawner"
    c.DockerSpawner.image = settings.lab_image
    c.DockerSpawner.network_name = names.labs_network(project)
    c.DockerSpawner.use_internal_ip = True
    c.DockerSpawner.remove = True
    c.DockerSpawner.prefix = project
    c.DockerSpawner.name_template = names.lab_name_template()
    c.DockerSpawner.notebook_dir = LAB_HOME
    c.DockerSpawner.default_url = "/lab"
    volumes: dict = {names.work_volume_template(project): names.WORK_MOUNT}
    if settings.shared_data_dir:
        volumes[settings.shared_data_dir] = {"bind": names.SHARED_MOUNT, "mode": "ro"}
    c.DockerSpawner.volumes = volumes
    c.DockerSpawner.extra_create_kwargs = {"labels": {LABEL_PROJECT: project}}
    # Labs run as the image's non-root user; nothing lets them gain privileges back.
    c.DockerSpawner.extra_host_config = {
        "security_opt": ["no-new-privileges"],
        "cap_drop": ["ALL"],
        "pids_limit": settings.lab_pids_limit,
        # The lab's log is capped (rotated): it cannot fill the disk everyone needs.
        "log_config": {"type": lablimits.LOG_DRIVER, "config": dict(lablimits.LOG_OPTIONS)},
    }
    tmp = lablimits.lab_tmp(settings.lab_tmp_size)
    if tmp:  # /tmp in memory, capped (LAB_TMP_SIZE): it cannot fill Docker's disk
        c.DockerSpawner.extra_host_config["tmpfs"] = tmp
    # JupyterHub's timeout covers the whole start, a wait in line for a GPU included: a
    # wait is not a failed spawn. The lab's own boot has SPAWN_TIMEOUT (boot_timeout).
    c.Spawner.start_timeout = settings.spawn_timeout + settings.gpu_line_timeout
    c.GpuDockerSpawner.boot_timeout = settings.spawn_timeout
    c.GpuDockerSpawner.gpu_line_timeout = settings.gpu_line_timeout
    c.GpuDockerSpawner.gpu_line_max = settings.gpu_line_max
    c.GpuDockerSpawner.line_file = str(Path(names.HUB_DATA_DIR) / names.GPU_LINE_FILE)
    c.GpuDockerSpawner.stop_reasons_dir = str(Path(names.HUB_DATA_DIR) / names.STOP_REASONS_DIR)
    # GPUs out of service after a fault: kept on the hub's volume, brought back by the
    # sampler's readings (compose mode: it runs on this host) or by `invoke gpus --back`.
    c.GpuDockerSpawner.out_of_service_file = str(
        Path(names.HUB_DATA_DIR) / names.GPU_OUT_OF_SERVICE_FILE)
    c.GpuDockerSpawner.gpu_back_dir = str(Path(names.HUB_DATA_DIR) / names.GPU_BACK_DIR)
    c.GpuDockerSpawner.gpu_samples_file = names.GPU_SAMPLES_FILE
    # A lab that dies is noticed within this many seconds (one cheap inspect per lab).
    c.Spawner.poll_interval = 10
    c.Spawner.http_timeout = min(120, settings.spawn_timeout)
    c.GpuDockerSpawner.project = project
    c.GpuDockerSpawner.usage_journal = str(Path(names.HUB_DATA_DIR) / names.USAGE_JOURNAL_FILE)
    c.GpuDockerSpawner.docker_threads = settings.docker_api_threads
    c.GpuDockerSpawner.require_lab_firewall = settings.lab_firewall
    c.GpuDockerSpawner.lab_start_concurrency = lab_start_slots(
        settings.lab_start_concurrency, weighted=bool(services_parent))


def update_lab_limits(c, settings: Settings, host_memory: int, labs_parent: str = "",
                      disk_limit: int = 0) -> None:
    """Memory and CPU per lab: LAB_MEM_LIMIT and LAB_CPU_LIMIT, auto resolved for a host
    with ``host_memory`` bytes (see gpuhub.core.lablimits). A profile's own limits win.

    ``labs_parent``: the parent cgroup of all labs (LABS_MEM_LIMIT, named by `invoke up`);
    labs are made in it, and start only while lab-memory keeps its limit in place.
    ``disk_limit``: bytes of each lab's writable layer (LAB_DISK_LIMIT as `invoke up` found
    Docker can keep it); 0: none.
    """
    c.DockerSpawner.mem_limit = lablimits.lab_memory(settings.lab_mem_limit, host_memory)
    c.DockerSpawner.cpu_limit = lablimits.lab_cpus(settings.lab_cpu_limit)
    host_config = dict(c.DockerSpawner.extra_host_config)
    host_config.pop("cgroup_parent", None)
    host_config.pop("storage_opt", None)
    if labs_parent:
        host_config["cgroup_parent"] = labs_parent
    if disk_limit:
        host_config["storage_opt"] = lablimits.storage_opt(disk_limit)
    c.DockerSpawner.extra_host_config = host_config
    c.GpuDockerSpawner.require_lab_memory = bool(labs_parent)


def lab_start_slots(setting: str | int, weighted: bool) -> int:
    """LAB_START_CONCURRENCY as a number (0: no limit).

    auto: no limit while the hub, proxy and broker run under the parent cgroup lab-memory
    keeps at a high CPU weight (``weighted``; docs/explanation/benchmark.md): the hub then
    answers within its target while every lab boots at once, and every user's lab is
    ready at about the same time, the last no later than in turns. Without it, one slot per
    CPU core the hub may use, which keeps the hub answering instead."""
    if setting != "auto":
        return int(setting)
    return 0 if weighted else len(os.sched_getaffinity(0))


def update_gpus(c, settings: Settings, gpus: list[gpu_inventory.Gpu], profiles_yaml: str) -> None:
    """Inventory, policy, limits, pins and profiles for the GPU allocator."""
    by_key = {g.index: g.device_id for g in gpus} | {g.uuid: g.device_id for g in gpus if g.uuid}
    pins = {}
    for user, devices in settings.gpu_pins.items():
        missing = [d for d in devices if d not in by_key]
        if missing:
            raise ValueError(f"GPU_PINS pins {user} to {missing}, which the GPU inventory "
                             f"does not have ({', '.join(by_key) or 'no GPUs'}); fix GPU_PINS")
        pins[user] = [by_key[d] for d in devices]
    c.GpuDockerSpawner.gpu_inventory = [g.device_id for g in gpus]
    c.GpuDockerSpawner.gpu_slices = {g.device_id: g.mig_profile for g in gpus if g.is_mig}
    c.GpuDockerSpawner.gpu_parents = {g.device_id: g.parent for g in gpus if g.is_mig}
    c.GpuDockerSpawner.gpu_policy = settings.gpu_policy
    c.GpuDockerSpawner.gpu_limits = dict(settings.gpu_limits)
    c.GpuDockerSpawner.gpu_pins = pins
    growth = gpu_inventory.allow_growth(settings.gpu_policy, settings.gpu_allow_growth)
    c.GpuDockerSpawner.gpu_env_extra = {"TF_FORCE_GPU_ALLOW_GROWTH": "true"} if growth else {}
    c.GpuDockerSpawner.profiles_yaml = profiles_yaml


def update_services(c, settings: Settings, data_dir: Path,
                    secrets_dir: Path = SECRETS_DIR, docker_host: str = "") -> None:
    """Hub services: the idle culler, the token `invoke` uses for user admin, and the
    one Prometheus scrapes the metrics with."""
    admin_token = read_or_create_secret(data_dir / ADMIN_TOKEN_FILE)
    services: list[dict[str, object]] = [{"name": ADMIN_SERVICE, "api_token": admin_token}]
    # `invoke adduser --admin` grants admin rights, which only the admin role may do.
    roles: list[dict[str, object]] = [{"name": "admin", "services": [ADMIN_SERVICE]}]
    # Prometheus scrapes /hub/metrics with this service's token (JupyterHub asks for the
    # read:metrics scope there); `invoke up` makes it under SECRETS_DIR for the scrape config.
    c.JupyterHub.authenticate_prometheus = True
    services.append({"name": METRICS_SERVICE,
                     "api_token": read_token_file(secrets_dir / names.METRICS_TOKEN_SECRET,
                                                  "metrics token")})
    roles.append({"name": "metrics-scraper", "scopes": ["read:metrics"],
                  "services": [METRICS_SERVICE]})
    # Both modes: removes labs whose user is gone; compose mode also stops GPU labs whose GPUs
    # stay idle, and labs past their profile's max_age, when the settings and profiles ask.
    services.append({
        "name": "gpu-reclaimer",
        "command": [sys.executable, "-m", "gpuhub.services.reclaim"],
        # Managed services inherit almost nothing from the hub: the settings whole, and
        # Docker the way the hub reaches it.
        "environment": {**settings.raw_env(), "DOCKER_HOST": docker_host},
    })
    roles.append({"name": "gpu-reclaimer", "scopes": ["delete:servers", "read:users:name"],
                  "services": ["gpu-reclaimer"]})
    if settings.idle_timeout:
        services.append({
            "name": "idle-culler",
            "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                        f"--timeout={settings.idle_timeout}"],
        })
        roles.append({
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        })
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles


def update_pages(c) -> None:
    """gpuhub's own hub pages, for admins: /hub/gpus (gpuhub.hub.gpupage) and
    /hub/work-folders (gpuhub.hub.workpage)."""
    c.JupyterHub.extra_handlers = [("/gpus", "gpuhub.hub.gpupage.GpuPage"),
                                   ("/work-folders", "gpuhub.hub.workpage.WorkFolderPage")]


def apply_config(c, settings: Settings, env: Mapping[str, str] | None = None,
                 data_dir: Path = DATA_DIR, profiles_path: Path = PROFILES_PATH,
                 secrets_dir: Path = SECRETS_DIR,
                 meminfo: Path = lablimits.MEMINFO, work_use: WorkUse | None = None) -> None:
    """Set everything gpuhub configures on ``c`` (a traitlets Config).

    ``work_use``: the work folders' report (WORK_QUOTA) the hub's pages show from.

    Raises ValueError (or ProfileError) with a message for the admin when the GPU
    inventory, the pins, profiles.yaml or the labs' memory limit are wrong.
    """
    env = os.environ if env is None else env
    gpus = gpu_inventory.remembered(env.get("GPUHUB_GPU_INVENTORY", ""),
                                    data_dir / gpu_inventory.INVENTORY_FILE)
    profiles_yaml = Path(profiles_path).read_text() if Path(profiles_path).exists() else ""
    if profiles_yaml:
        Profiles.from_yaml(profiles_yaml, str(profiles_path))  # validate once, at start
    update_hub(c, settings, data_dir, secrets_dir)
    update_tls(c, settings)
    update_origins(c, settings)
    update_auth(c, settings, secrets_dir)
    update_spawner(c, settings, env.get(names.SERVICES_CGROUP_PARENT_ENV, ""))
    update_lab_limits(c, settings, lablimits.host_memory(env, meminfo),
                      env.get(names.LABS_CGROUP_PARENT_ENV, ""), lablimits.lab_disk_limit(env))
    hub_mode(settings).update_config(c)
    update_gpus(c, settings, gpus, profiles_yaml)
    update_services(c, settings, data_dir, secrets_dir, env.get("DOCKER_HOST", ""))
    update_pages(c)
    # The pages' own lines (gpuhub's page.html), set here at once: config only sets.
    c.JupyterHub.template_vars = {**origins.template_vars(settings),
                                  **workfolders.template_vars(work_use)}


def load_admin_config(c, folder: Path = Path(names.HUB_CONFIG_D)) -> list[str]:
    """Run the admin's own ``*.py`` files (jupyterhub_config.d), in name order, after
    gpuhub's configuration, with ``c`` in scope; the files run. A file that fails raises a
    ValueError naming it (the hub then does not start)."""
    ran = []
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        try:
            code = compile(path.read_text(), str(path), "exec")
            exec(code, {"c": c, "get_config": lambda: c, "__file__": str(path)})
        except Exception as err:
            raise ValueError(f"{names.CONFIG_D_FOLDER}/{path.name} failed: "
                             f"{type(err).__name__}: {err}") from None
        ran.append(path.name)
    return ran
