"""apply_config over a bare traitlets Config: each default next to its override."""

import contextlib
import os
import sqlite3
import stat
import sys

import pytest
import yaml
from traitlets.config import Config

from gpuhub.core import names
from gpuhub.core.accounts import MIN_PASSWORD_LENGTH, USERNAME_PATTERN
from gpuhub.core.gpus import Gpu, to_json
from gpuhub.core.settings import validate
from gpuhub.hub.hubconfig import (
    ADMIN_SERVICE,
    ADMIN_TOKEN_FILE,
    DOCKER_PROXY_URL,
    LAB_HOME,
    apply_config,
    check_docker_access,
    load_admin_config,
)
from gpuhub.hub.origins import LoginOnHubHostOnly
from gpuhub.hub.spawner import GpuDockerSpawner
from harness import ROOT
from support.hubsecrets import secrets_dir
from support.spawners import user_spawner


def meminfo(tmp_path, gib: int):
    """A /proc/meminfo of a host with ``gib`` GiB (what the hub reads without invoke's word)."""
    path = tmp_path / f"meminfo-{gib}"
    path.write_text(f"MemTotal:       {gib * 1024 * 1024} kB\nMemFree:         1024 kB\n")
    return path


@pytest.fixture
def configure(tmp_path):
    """Apply gpuhub's config for the given settings (and extra environment) to a new Config."""

    def configure(env=None, **settings):
        c = Config()
        apply_config(c, validate(settings), env=env or {}, data_dir=tmp_path,
                     secrets_dir=secrets_dir(tmp_path), meminfo=meminfo(tmp_path, 16))
        return c

    return configure


def services(c) -> dict:
    return {s["name"]: s for s in c.JupyterHub.services}


def test_database_is_sqlite_on_the_data_volume(configure, tmp_path):
    assert configure().JupyterHub.db_url == f"sqlite:///{tmp_path}/jupyterhub.sqlite"


def test_the_sqlite_database_is_in_write_ahead_log_mode(configure, tmp_path):
    configure()
    db = tmp_path / "jupyterhub.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as conn:  # a plain client sees it too
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.unlink()
    db.write_bytes(b"")  # a database of the rollback journal (SQLite's default)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE t (a)")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    configure()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]


def test_database_url_overrides_sqlite(configure, tmp_path):
    url = "postgresql://hub:secret@db/hub"
    assert configure(DATABASE_URL=url).JupyterHub.db_url == url
    assert not (tmp_path / "jupyterhub.sqlite").exists()


def test_hub_state_lives_in_the_data_dir(configure, tmp_path):
    c = configure()
    assert c.JupyterHub.cookie_secret_file == str(tmp_path / "jupyterhub_cookie_secret")
    # The proxy is its own compose service; the hub only talks to its API.
    assert c.ConfigurableHTTPProxy.should_start is False
    assert c.ConfigurableHTTPProxy.api_url == "http://proxy:8001"
    assert c.ConfigurableHTTPProxy.auth_token == "proxy-token-for-tests"
    assert c.JupyterHub.hub_connect_ip == "hub"
    assert c.JupyterHub.cleanup_servers is False


def test_log_level_default_and_override(configure):
    assert configure().JupyterHub.log_level == "INFO"
    assert configure(LOG_LEVEL="debug").JupyterHub.log_level == "DEBUG"


def test_idle_culler_runs_with_the_timeout(configure):
    c = configure()
    culler = services(c)["idle-culler"]
    assert culler["command"] == [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=3600"]
    assert "idle-culler" in {r["name"] for r in c.JupyterHub.load_roles}
    assert services(configure(IDLE_TIMEOUT="600"))["idle-culler"]["command"][-1] == "--timeout=600"


def test_idle_timeout_zero_means_no_culler(configure):
    c = configure(IDLE_TIMEOUT="0")
    assert "idle-culler" not in services(c)
    assert "idle-culler" not in {r["name"] for r in c.JupyterHub.load_roles}
    assert ADMIN_SERVICE in services(c)


def test_admin_service_may_manage_users(configure):
    roles = [r for r in configure().JupyterHub.load_roles if ADMIN_SERVICE in r.get("services", [])]
    assert any(r["name"] == "admin"  # JupyterHub's built-in role
               or {"admin:users", "admin:servers", "list:users"} <= set(r.get("scopes", []))
               for r in roles), roles


def test_labs_get_only_their_home_volume_by_default(configure):
    assert configure().DockerSpawner.volumes == {"gpuhub-home-{username}": f"{LAB_HOME}/work"}


def test_shared_data_dir_is_mounted_read_only(configure):
    volumes = configure(SHARED_DATA_DIR="/srv/datasets").DockerSpawner.volumes
    assert volumes["/srv/datasets"] == {"bind": f"{LAB_HOME}/shared", "mode": "ro"}
    assert len(volumes) == 2


def test_labs_get_the_hosts_memory_less_a_reserve_and_no_cpu_quota_by_default(configure):
    c = configure()  # the hub's own /proc/meminfo: 16 GiB
    assert c.DockerSpawner.mem_limit == "14336M"  # 16 GiB less 2 GiB
    assert c.DockerSpawner.cpu_limit is None


def test_auto_memory_follows_the_host_size_invoke_up_reports(configure):
    c = configure(env={"GPUHUB_LAB_HOST_MEMORY": str(64 * 1024**3)})
    assert c.DockerSpawner.mem_limit == "58982M"  # 64 GiB less 10 %


def test_resource_limits(configure):
    c = configure(LAB_CPU_LIMIT="2.5", LAB_MEM_LIMIT="16g")
    assert c.DockerSpawner.cpu_limit == 2.5
    assert c.DockerSpawner.mem_limit == "16G"


def test_none_means_no_limit(configure):
    c = configure(LAB_CPU_LIMIT="none", LAB_MEM_LIMIT="none")
    assert (c.DockerSpawner.cpu_limit, c.DockerSpawner.mem_limit) == (None, None)


def test_auto_memory_without_any_host_size_stops_the_hub_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="LAB_MEM_LIMIT=auto, but the memory .* unknown"):
        apply_config(Config(), validate({}), env={}, data_dir=tmp_path,
                     secrets_dir=secrets_dir(tmp_path), meminfo=tmp_path / "no-meminfo")


def test_spawn_timeout_default_and_override(configure):
    c = configure()
    # JupyterHub's timeout covers a wait in line too; the lab's boot has SPAWN_TIMEOUT.
    assert (c.Spawner.start_timeout, c.Spawner.http_timeout) == (300 + 1800, 120)
    assert c.GpuDockerSpawner.boot_timeout == 300
    c = configure(SPAWN_TIMEOUT="60", GPU_LINE_TIMEOUT="0")
    assert (c.Spawner.start_timeout, c.Spawner.http_timeout) == (60, 60)
    assert (c.GpuDockerSpawner.boot_timeout, c.GpuDockerSpawner.gpu_line_timeout) == (60, 0)


def test_labs_boot_at_once_by_default_while_the_hubs_services_are_weighted(configure):
    weighted = {names.SERVICES_CGROUP_PARENT_ENV: "/gpuhub-gpuhub-services",
                names.LABS_CGROUP_PARENT_ENV: "/gpuhub-gpuhub-labs"}
    assert configure(env=weighted).GpuDockerSpawner.lab_start_concurrency == 0
    # Without lab-memory's parent (LABS_MEM_LIMIT=none, or compose by hand): one per core.
    cores = len(os.sched_getaffinity(0))
    assert configure().GpuDockerSpawner.lab_start_concurrency == cores
    assert configure(env={names.LABS_CGROUP_PARENT_ENV: "/gpuhub-gpuhub-labs"}
                     ).GpuDockerSpawner.lab_start_concurrency == cores
    # A number set is kept either way.
    for env in (weighted, {}):
        for setting, slots in (("3", 3), ("0", 0), ("1", 1)):
            c = configure(env=dict(env), LAB_START_CONCURRENCY=setting)
            assert c.GpuDockerSpawner.lab_start_concurrency == slots


def test_names_come_from_the_compose_project(configure):
    c = configure()
    assert c.DockerSpawner.network_name == "gpuhub-labs"
    assert c.DockerSpawner.prefix == "gpuhub"
    assert c.DockerSpawner.extra_create_kwargs == {"labels": {"gpuhub.project": "gpuhub"}}
    c = configure(COMPOSE_PROJECT_NAME="gpuhub-test-7")
    assert c.DockerSpawner.network_name == "gpuhub-test-7-labs"
    assert c.DockerSpawner.prefix == "gpuhub-test-7"
    assert c.DockerSpawner.name_template == "{prefix}-lab-{username}"
    assert c.DockerSpawner.volumes == {"gpuhub-test-7-home-{username}": f"{LAB_HOME}/work"}
    assert c.DockerSpawner.extra_create_kwargs == {"labels": {"gpuhub.project": "gpuhub-test-7"}}


def test_lab_image_default_and_override(configure):
    assert configure().DockerSpawner.image == "gpuhub-lab:latest"
    assert configure(LAB_IMAGE="registry.local/lab:1").DockerSpawner.image == "registry.local/lab:1"


def test_admin_users_default_and_override(configure):
    assert configure().Authenticator.admin_users == {"admin"}
    assert configure(ADMIN_USERS="alice,bob").Authenticator.admin_users == {"alice", "bob"}


def test_native_authenticator_is_set_explicitly(configure):
    c = configure()
    assert c.JupyterHub.authenticator_class == "gpuhub.hub.auth.GpuhubAuthenticator"
    assert c.Authenticator.allow_all is True
    assert c.Authenticator.username_pattern == USERNAME_PATTERN
    assert c.NativeAuthenticator.enable_signup is False
    assert c.NativeAuthenticator.open_signup is False
    assert c.NativeAuthenticator.minimum_password_length == MIN_PASSWORD_LENGTH
    assert c.NativeAuthenticator.check_common_password is True


def test_no_gpus_without_an_inventory(configure):
    assert configure().GpuDockerSpawner.gpu_inventory == []
    assert configure(env={"GPUHUB_GPU_INVENTORY": "[]"}).GpuDockerSpawner.gpu_inventory == []


def test_gpu_inventory_from_the_environment(configure):
    inventory = to_json([Gpu("0", "GPU-aaa"), Gpu("1")])
    c = configure(env={"GPUHUB_GPU_INVENTORY": inventory})
    assert c.JupyterHub.spawner_class == "gpuhub.hub.spawner.GpuDockerSpawner"
    assert c.GpuDockerSpawner.gpu_inventory == ["GPU-aaa", "1"]


def test_broken_gpu_inventory_stops_with_its_name(configure):
    with pytest.raises(ValueError, match="GPUHUB_GPU_INVENTORY is not a valid inventory"):
        configure(env={"GPUHUB_GPU_INVENTORY": "GPU-aaa"})


def test_applying_twice_gives_the_same_config(configure, tmp_path):
    settings = validate({"SHARED_DATA_DIR": "/srv/data", "ADMIN_USERS": "alice"})
    env = {"GPUHUB_GPU_INVENTORY": to_json([Gpu("0", "GPU-aaa")])}
    once, twice = Config(), Config()
    apply_config(once, settings, env=env, data_dir=tmp_path, secrets_dir=secrets_dir(tmp_path))
    apply_config(twice, settings, env=env, data_dir=tmp_path, secrets_dir=secrets_dir(tmp_path))
    apply_config(twice, settings, env=env, data_dir=tmp_path, secrets_dir=secrets_dir(tmp_path))
    assert twice == once


def test_admin_token_file_is_private_and_reused(configure, tmp_path):
    token = services(configure())[ADMIN_SERVICE]["api_token"]
    path = tmp_path / ADMIN_TOKEN_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_text() == token + "\n"
    assert len(token) == 64
    assert services(configure())[ADMIN_SERVICE]["api_token"] == token


def test_admin_token_is_created_in_a_missing_data_dir(tmp_path):
    c = Config()
    apply_config(c, validate({}), env={}, data_dir=tmp_path / "new", secrets_dir=secrets_dir(tmp_path))
    assert services(c)[ADMIN_SERVICE]["api_token"] == (tmp_path / "new" / ADMIN_TOKEN_FILE).read_text().strip()


def test_empty_admin_token_file_is_replaced(configure, tmp_path):
    (tmp_path / ADMIN_TOKEN_FILE).write_text("\n")
    assert len(services(configure())[ADMIN_SERVICE]["api_token"]) == 64


def spawner_for(c) -> GpuDockerSpawner:
    """Build the spawner the hub would build from ``c``: this is when traits are validated."""
    return user_spawner(c)


def test_the_spawner_accepts_the_defaults(configure):
    spawner = spawner_for(configure(env={"GPUHUB_GPU_INVENTORY": to_json([Gpu("0", "GPU-aaa")])}))
    assert spawner.gpu_inventory == ["GPU-aaa"]
    assert spawner.container_name == "gpuhub-lab-alice"
    assert spawner.network_name == "gpuhub-labs"
    assert (spawner.cpu_limit, spawner.mem_limit) == (None, 14336 * 1024**2)
    assert spawner.volume_binds == {"gpuhub-home-alice": {"bind": f"{LAB_HOME}/work", "mode": "rw"}}


def test_the_spawner_accepts_limits_and_shared_data(configure):
    spawner = spawner_for(configure(
        LAB_CPU_LIMIT="0.5", LAB_MEM_LIMIT="1.5g", SHARED_DATA_DIR="/srv/data"))
    assert spawner.cpu_limit == 0.5
    assert spawner.mem_limit == 1536 * 1024**2
    assert spawner.volume_binds["/srv/data"] == {"bind": f"{LAB_HOME}/shared", "mode": "ro"}


def test_a_profiles_own_limits_win_over_auto(configure):
    from gpuhub.core.profiles import Profile

    spawner = spawner_for(configure())
    spawner.apply_profile(Profile(slug="big", display_name="Big", mem_limit="64G", cpu_limit=8.0))
    assert (spawner.mem_limit, spawner.cpu_limit) == (64 * 1024**3, 8.0)
    spawner.apply_profile(Profile(slug="cpu", display_name="CPU"))
    assert (spawner.mem_limit, spawner.cpu_limit) == (14336 * 1024**2, None)


def test_a_missing_proxy_token_stops_the_hub_with_the_fix(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="invoke up"):
        apply_config(Config(), validate({}), env={}, data_dir=tmp_path,
                     secrets_dir=tmp_path / "absent")


# --- how the hub reaches Docker, and the lab firewall --------------------------------

@pytest.fixture
def socket_file(tmp_path):
    """Where the Docker socket would be mounted; create it to mount it."""
    return tmp_path / "docker.sock"


def test_through_the_proxy_the_hub_has_its_address_and_no_socket(socket_file):
    check_docker_access(validate({}), {"DOCKER_HOST": DOCKER_PROXY_URL}, socket_file)
    with pytest.raises(ValueError, match="DOCKER_HOST is '', not 'tcp://docker-proxy:2375'"):
        check_docker_access(validate({}), {}, socket_file)
    socket_file.touch()
    with pytest.raises(ValueError, match="but the hub has the Docker socket"):
        check_docker_access(validate({}), {"DOCKER_HOST": DOCKER_PROXY_URL}, socket_file)


def test_without_the_proxy_the_hub_needs_the_socket(socket_file):
    direct = validate({"DOCKER_SOCKET_PROXY": "false"})
    with pytest.raises(ValueError, match="add -f docker-compose.docker-socket.yml"):
        check_docker_access(direct, {"DOCKER_HOST": ""}, socket_file)
    socket_file.touch()
    check_docker_access(direct, {"DOCKER_HOST": ""}, socket_file)


def test_the_gpu_page_is_a_hub_page_and_prometheus_may_only_read_metrics(configure):
    c = configure()
    # In the hub (its layout, login and Docker access), not a service of its own.
    assert c.JupyterHub.extra_handlers == [("/gpus", "gpuhub.hub.gpupage.GpuPage"),
                                           ("/work-folders", "gpuhub.hub.workpage.WorkFolderPage")]
    assert "gpus" not in services(c)
    assert services(c)["prometheus"]["api_token"] == "metrics-token-for-tests"
    assert c.JupyterHub.authenticate_prometheus is True
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["metrics-scraper"] == {"name": "metrics-scraper", "scopes": ["read:metrics"],
                                        "services": ["prometheus"]}


def test_labs_wait_for_the_lab_firewall_unless_it_is_off(configure):
    assert configure().GpuDockerSpawner.require_lab_firewall is True
    assert configure(LAB_FIREWALL="false").GpuDockerSpawner.require_lab_firewall is False


def test_the_hub_serves_gpuhubs_pages_which_extend_its_own(configure):
    from pathlib import Path

    from gpuhub.hub import hubconfig

    assert configure().JupyterHub.template_paths == [str(hubconfig.TEMPLATES)]
    home = Path(__file__).resolve().parents[2] / "jupyterhub" / "templates" / "home.html"
    dockerfile = home.parents[1] / "Dockerfile"
    assert '{% extends "templates/home.html" %}' in home.read_text()
    assert f"COPY jupyterhub/templates {hubconfig.TEMPLATES}" in dockerfile.read_text()


def test_the_gpu_reclaimer_may_only_stop_servers_and_see_user_names_and_reaches_docker_as_the_hub(
        configure):
    c = configure(env={"DOCKER_HOST": DOCKER_PROXY_URL})
    reclaimer = services(c)["gpu-reclaimer"]
    assert reclaimer["command"][1:] == ["-m", "gpuhub.services.reclaim"]
    # The settings whole (a new setting cannot silently fall back to its default there).
    assert reclaimer["environment"]["GPU_IDLE_TIMEOUT"] == "3600"
    assert reclaimer["environment"]["DOCKER_HOST"] == DOCKER_PROXY_URL
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["gpu-reclaimer"]["scopes"] == ["delete:servers", "read:users:name"]
    # Also with no GPU to reclaim: it removes the labs of users the hub no longer has.
    assert "gpu-reclaimer" in services(configure(GPU_IDLE_TIMEOUT="0"))


def test_the_admins_own_settings_run_after_gpuhubs_in_name_order(tmp_path):
    c = Config()
    c.JupyterHub.log_level = "INFO"  # as gpuhub set it
    (tmp_path / "20-later.py").write_text(
        "c.JupyterHub.template_vars = {'order': c.JupyterHub.template_vars['order'] + ',20'}\n")
    (tmp_path / "10-first.py").write_text("c.JupyterHub.template_vars = {'order': '10'}\n"
                                          "c.JupyterHub.log_level = 'DEBUG'\n")
    (tmp_path / "notes.txt").write_text("not python: not run")
    assert load_admin_config(c, tmp_path) == ["10-first.py", "20-later.py"]
    assert c.JupyterHub.log_level == "DEBUG"  # overrides gpuhub's
    assert c.JupyterHub.template_vars == {"order": "10,20"}


def test_a_failing_admin_file_stops_the_hub_with_its_name(tmp_path):
    (tmp_path / "10-typo.py").write_text("c.JupyterHub.log_level = undefined_name\n")
    with pytest.raises(ValueError, match=r"jupyterhub_config.d/10-typo.py failed: NameError"):
        load_admin_config(Config(), tmp_path)
    assert load_admin_config(Config(), tmp_path / "missing") == []


def test_compose_mounts_the_admins_folder_read_only_in_the_hub():
    hub = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["hub"]
    assert f"./{names.CONFIG_D_FOLDER}:{names.HUB_CONFIG_D}:ro" in hub["volumes"]
    assert (ROOT / names.CONFIG_D_FOLDER / "README.md").is_file()  # the folder exists


def test_each_lab_has_its_own_origin_and_the_login_is_on_the_hub_host_only(configure):
    c = configure(HUB_DOMAIN="gpu.example.org", HUB_PORT="8443")
    assert c.JupyterHub.subdomain_host == "http://gpu.example.org:8443"
    assert c.Authenticator.post_auth_hook == LoginOnHubHostOnly(
        "gpu.example.org", "http://gpu.example.org:8443")
    assert c.JupyterHub.template_vars == {"gpuhub_shared_origin_warning": "",
                                          "gpuhub_work_folder_note": "",
                                          "gpuhub_full_work_folders": ""}


def test_labs_on_the_hub_origin_only_when_the_admin_accepts_what_it_costs(configure):
    c = configure(HUB_DOMAIN="192.0.2.10", USERS_CAN_ACT_AS_EACH_OTHER="true")
    assert c.JupyterHub.subdomain_host == ""
    assert "post_auth_hook" not in c.Authenticator
    warning = c.JupyterHub.template_vars["gpuhub_shared_origin_warning"]
    assert "any user can act as anyone who opens a link into their lab" in warning
    page = (ROOT / "jupyterhub" / "templates" / "page.html").read_text()
    assert "gpuhub_shared_origin_warning and user and user.admin" in page


def test_labs_are_made_in_the_labs_parent_cgroup_that_invoke_up_names(configure):
    c = configure(env={"GPUHUB_LABS_CGROUP_PARENT": "/gpuhub-gpuhub-labs"})
    assert c.DockerSpawner.extra_host_config["cgroup_parent"] == "/gpuhub-gpuhub-labs"
    assert c.GpuDockerSpawner.require_lab_memory is True
    bare = configure()  # compose run by hand without it: no parent, nothing to wait for
    assert "cgroup_parent" not in bare.DockerSpawner.extra_host_config
    assert bare.GpuDockerSpawner.require_lab_memory is False
