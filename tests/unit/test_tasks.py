"""Invoke tasks with MockContext: the exact commands, and the one-line errors before Docker."""

import copy
import importlib.machinery
import importlib.util
import io
import json
import re
import shlex
import socket
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from invoke import Exit, MockContext, Result

import tasks as tasks_py
from gpuhub.core.gpus import Gpu
from gpuhub.core.settings import BY_NAME, DEFAULT_JUPYTERHUB_VERSION
from gpuhub.tasks import composestack, stack, users
from gpuhub.tasks import project as project_mod
from support.mock_docker import (
    CGROUP_INFO,
    COMPOSE_VERSION,
    DOCKER_INFO,
    DOCKER_MEMORY,
    HOST_PROBES,
    commands,
    docker_context,
    labs_bridge_check,
    labs_network_setup,
    remove_firewall_rules,
)
from support.tasks import assert_one_line_error, compose, hub_database_check

ROOT = project_mod.ROOT
USERCLI = "python3 -m gpuhub.services.usercli"



def compose_up(env_path, timeout: int, gpus: bool = True, apart: bool = True) -> str:
    """`invoke up`'s compose command; with GPUs, the sampler may read them; with the lab
    firewall, labs are kept apart."""
    extra = (["docker-compose.gpu-sampler.yml"] if gpus else []) + (
        ["docker-compose.labs-apart.yml"] if apart else [])
    return compose(env_path, f"up -d --wait --wait-timeout {timeout}", extra)


def context(*pairs, running=True) -> MockContext:
    """Docker answers, the hub runs unless told (see support.mock_docker)."""
    return docker_context(*pairs, running=running)





def call_for(c, command: str):
    (call,) = [call for call in c.run.call_args_list if call.args[0] == command]
    return call


# --- the collection ---------------------------------------------------------------

def test_tasks_py_lists_every_task_with_a_docstring_and_flag_help():
    names = set(tasks_py.ns.task_names)
    assert names >= {"up", "down", "restart", "build", "status", "logs",
                     "adduser", "deluser", "passwd", "users"}
    for name in names:
        t = tasks_py.ns[name]
        assert t.__doc__ and len(t.__doc__.strip().splitlines()) == 1, name
        # get_arguments() pops Task.help (and rejects help for unknown flags): use a copy.
        arguments = copy.deepcopy(t).get_arguments()
        undocumented = [a.name for a in arguments if a.name != "name" and not a.help]
        assert not undocumented, f"{name}: flags without help=: {undocumented}"


# --- settings are checked before Docker ----------------------------------------------

@pytest.mark.parametrize("task", [stack.up, stack.build, stack.down, stack.restart,
                                  stack.status, stack.logs, users.users])
def test_invalid_settings_stop_every_task_before_docker(env_file, task):
    path = env_file(HUB_PORT="eighty", ADMIN_USERS="Root")
    c = MockContext(run={})
    with pytest.raises(Exit) as info:
        task(c)
    assert_one_line_error(info, str(path), "HUB_PORT='eighty'", "ADMIN_USERS='Root'",
                          "whole number from 1 to 65535")
    assert c.run.call_count == 0


def test_unknown_setting_in_the_file_stops_before_docker(env_file):
    env_file(HUB_PROT="8000")
    c = MockContext(run={})
    with pytest.raises(Exit) as info:
        stack.up(c)
    assert_one_line_error(info, "unknown setting 'HUB_PROT'", "Did you mean")
    assert c.run.call_count == 0


def test_compose_command_without_a_settings_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUHUB_ENV_FILE", str(tmp_path / "absent.env"))
    project = project_mod.load()
    assert project.compose("ps") == (
        f"docker compose --project-directory {ROOT} -f {ROOT / 'docker-compose.yml'} ps")
    assert project.settings.hub_port == 8000


def test_project_env_carries_settings_and_the_file(env_file):
    path = env_file(HUB_PORT="8443", ADMIN_USERS="alice,bob")
    env = project_mod.load().env(GPUHUB_GPU_INVENTORY="[]")
    assert env["HUB_PORT"] == "8443"
    assert env["ADMIN_USERS"] == "alice,bob"
    assert env["GPUHUB_ENV_FILE"] == str(path)
    assert env["GPUHUB_GPU_INVENTORY"] == "[]"


@pytest.mark.parametrize(("settings", "overrides"), [
    ({}, []),
    ({"DOCKER_SOCKET_PROXY": "false"}, ["docker-compose.docker-socket.yml"]),
    ({"LAB_FIREWALL": "false"}, ["docker-compose.no-lab-firewall.yml"]),
    ({"DOCKER_SOCKET_PROXY": "false", "LAB_FIREWALL": "false"},
     ["docker-compose.docker-socket.yml", "docker-compose.no-lab-firewall.yml"]),
])
def test_compose_files_follow_the_settings(env_file, settings, overrides):
    env_file(**settings)
    files = project_mod.load().compose_files
    assert files == ["docker-compose.yml", *overrides]
    assert all((ROOT / name).is_file() for name in files)


def test_a_long_project_name_gets_a_bridge_name_that_fits(env_file):
    env_file(COMPOSE_PROJECT_NAME="gpuhubtest-abcdef")
    bridge = project_mod.load().env()["GPUHUB_LABS_BRIDGE"]
    assert len(bridge) <= 15 and bridge.startswith("gpuhub-")


# --- build ------------------------------------------------------------------------

def build_command(dockerfile_dir: str, base: str, tag: str, context_dir, extra: str = "") -> str:
    return (f"docker build --build-arg JUPYTERHUB_VERSION={DEFAULT_JUPYTERHUB_VERSION} " + extra +
            f"--build-arg BASE_IMAGE={base} -f {ROOT / dockerfile_dir / 'Dockerfile'} "
            f"-t {tag} {context_dir}")


# The defaults' versions live in one place (gpuhub/core/constraints.txt, settings.py).
HUB_BASE = f"quay.io/jupyterhub/jupyterhub:{DEFAULT_JUPYTERHUB_VERSION}"
LAB_BASE = BY_NAME["LAB_BASE_IMAGE"].default
DEBIAN_BASE = BY_NAME["DEBIAN_BASE_IMAGE"].default
HUB = build_command("jupyterhub", HUB_BASE, "gpuhub-hub:latest", ROOT)
LAB = build_command("jupyterlab", LAB_BASE, "gpuhub-lab:latest", ROOT)
DOCKER_PROXY = (f"docker build --build-arg BASE_IMAGE={DEBIAN_BASE} "
                f"-f {ROOT / 'jupyterhub' / 'docker-proxy' / 'Dockerfile'} "
                f"-t gpuhub-docker-proxy:latest {ROOT}")
LAB_FIREWALL = (f"docker build --build-arg BASE_IMAGE={DEBIAN_BASE} "
                f"-f {ROOT / 'jupyterhub' / 'lab-firewall' / 'Dockerfile'} "
                f"-t gpuhub-lab-firewall:latest {ROOT}")


def test_build_runs_every_build_with_buildkit(env_file):
    c = context()
    stack.build(c)
    assert commands(c) == [DOCKER_INFO, COMPOSE_VERSION, HUB, DOCKER_PROXY, LAB_FIREWALL, LAB]
    assert all(call_for(c, cmd).kwargs["env"] == {"DOCKER_BUILDKIT": "1"}
               for cmd in (HUB, DOCKER_PROXY, LAB_FIREWALL, LAB))
    assert "--secret" not in HUB + LAB


def test_build_makes_only_the_helpers_the_settings_use(env_file):
    env_file(DOCKER_SOCKET_PROXY="false", DEBIAN_BASE_IMAGE="local/debian:12")
    c = context()
    stack.build(c, lab=False, no_cache=True)
    assert commands(c)[2:] == [
        build_command("jupyterhub", HUB_BASE, "gpuhub-hub:latest", ROOT, extra="--no-cache "),
        "docker build --no-cache --build-arg BASE_IMAGE=local/debian:12 "
        f"-f {ROOT / 'jupyterhub' / 'lab-firewall' / 'Dockerfile'} "
        f"-t gpuhub-lab-firewall:latest {ROOT}"]


def test_build_passes_extra_ca_certs_as_a_buildkit_secret(env_file):
    env_file(EXTRA_CA_CERTS="/etc/ssl/corp-ca.pem", LAB_IMAGE="lab:dev")
    c = context()
    stack.build(c, hub=False, no_cache=True)
    secret = "--secret id=extra_ca_certs,src=/etc/ssl/corp-ca.pem --no-cache "
    assert commands(c)[2:] == [
        build_command("jupyterlab", LAB_BASE, "lab:dev", ROOT, extra=secret)]


def test_build_failure_is_one_line(env_file):
    c = context((re.compile("docker build "), Result(exited=1)))
    with pytest.raises(Exit) as info:
        stack.build(c)
    assert_one_line_error(info, "image build failed", "EXTRA_CA_CERTS")
    assert len([cmd for cmd in commands(c) if cmd.startswith("docker build")]) == 1


def test_build_without_docker_is_one_line(env_file):
    c = context((DOCKER_INFO, Result(exited=1)))
    with pytest.raises(Exit) as info:
        stack.build(c)
    assert_one_line_error(info, "Docker is not running", "docker group")
    assert commands(c) == [DOCKER_INFO]


@pytest.mark.parametrize("version", ["2.19.1", "v2.12.2"])
def test_too_old_compose_is_one_line(env_file, version):
    c = context((COMPOSE_VERSION, Result(version + "\n")))
    with pytest.raises(Exit) as info:
        stack.build(c)
    assert_one_line_error(info, f"Docker Compose {version.lstrip('v')} is too old", "2.20")


def test_missing_compose_plugin_is_one_line(env_file):
    c = context((COMPOSE_VERSION, Result(exited=1)))
    with pytest.raises(Exit) as info:
        stack.build(c)
    assert_one_line_error(info, "docker-compose-plugin")


# --- up ---------------------------------------------------------------------------

def test_up_builds_starts_and_reports(env_file, free_port, no_gpu_detection, capsys):
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port)
    exists = compose(path, f"exec -T hub {USERCLI} add admin --admin --if-missing")
    c = context((exists, Result(exited=3)), (DOCKER_MEMORY, Result(f"{16 * 1024**3}\n")),
                running=False)
    stack.up(c)
    up = compose_up(path, 180)
    assert commands(c) == [
        DOCKER_INFO, COMPOSE_VERSION, compose(path, "ps --status running --quiet hub"),
        compose(path, "ps --status running --quiet proxy"),
        labs_bridge_check(), HUB, DOCKER_PROXY, LAB_FIREWALL, LAB, DOCKER_MEMORY,
        *labs_network_setup(), CGROUP_INFO, *HOST_PROBES, *hub_database_check(path), up, exists,
    ]
    env = call_for(c, up).kwargs["env"]
    assert env["GPUHUB_LABS_BRIDGE"] == "gpuhub-labs"
    # All labs under one parent cgroup, limited to LABS_MEM_LIMIT=auto (as LAB_MEM_LIMIT).
    assert {k: env[k] for k in ("GPUHUB_LABS_CGROUP_PARENT", "GPUHUB_LABS_MEMORY",
                                "GPUHUB_CGROUP_DRIVER", "GPUHUB_CGROUP_VERSION")} == {
        "GPUHUB_LABS_CGROUP_PARENT": "/gpuhub-gpuhub-labs",
        "GPUHUB_LABS_MEMORY": str(14336 * 1024**2), "GPUHUB_CGROUP_DRIVER": "cgroupfs",
        "GPUHUB_CGROUP_VERSION": "1"}
    # Labs apart: the subnet Docker's allocator gave the probe, the hub and the proxy fixed.
    assert {k: env[k] for k in ("GPUHUB_LABS_SUBNET", "GPUHUB_LABS_RANGE", "GPUHUB_HUB_ADDRESS",
                                "GPUHUB_PROXY_ADDRESS")} == {
        "GPUHUB_LABS_SUBNET": "172.30.0.0/16", "GPUHUB_LABS_RANGE": "172.30.128.0/17",
        "GPUHUB_HUB_ADDRESS": "172.30.0.2", "GPUHUB_PROXY_ADDRESS": "172.30.0.3"}
    # LAB_MEM_LIMIT=auto: the hub is told the Docker host's size, and the admin what it means.
    assert env["GPUHUB_LAB_HOST_MEMORY"] == str(16 * 1024**3)
    assert env["LAB_MEM_LIMIT"] == "auto"
    assert json.loads(env["GPUHUB_GPU_INVENTORY"]) == [
        {"index": "0", "uuid": "GPU-aaa", "name": "NVIDIA GPU", "memory_mib": 0}]
    assert env["HUB_PORT"] == str(free_port)
    out = capsys.readouterr().out
    assert ("==> labs may use up to 14336M of memory each (LAB_MEM_LIMIT=auto: 16.0 GiB "
            "less a reserve for the system and the hub)\n") in out
    assert f"gpuhub is up: http://localhost:{free_port}/  (1 GPU (1× NVIDIA GPU))\n" in out
    assert out.endswith(f"  each user's lab has its own origin: http://<user>.localhost:{free_port}/"
                        "  (this machine only: set HUB_DOMAIN to a DNS name with a wildcard "
                        "record for other machines)\n")


def test_compose_runs_docker_compose_with_ups_files_and_variables(
        env_file, free_port, no_gpu_detection, monkeypatch, capsys):
    """`invoke compose -- ARGS`: compose run by hand as `invoke up` runs it (the files that
    keep labs apart, the GPU inventory, the labs' memory limit), on the terminal."""
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port, ADMIN_USERS="")
    c = context((DOCKER_MEMORY, Result(f"{16 * 1024**3}\n")), running=False)
    stack.up(c, build=False)
    up_env = call_for(c, compose_up(path, 180)).kwargs["env"]
    capsys.readouterr()
    ran = []
    monkeypatch.setattr(composestack.subprocess, "run",
                        lambda cmd, env, check: ran.append((cmd, env)) or SimpleNamespace(returncode=4))
    monkeypatch.setattr(sys, "argv", ["invoke", "compose", "--", "exec", "hub", "sh", "-c", "a b"])
    c = context((DOCKER_MEMORY, Result(f"{16 * 1024**3}\n")))
    with pytest.raises(Exit) as info:  # compose's own exit status
        stack.compose(c)
    assert info.value.code == 4
    [(cmd, env)] = ran
    assert cmd == shlex.split(compose(path, "exec hub sh -c", ["docker-compose.gpu-sampler.yml",
                                                               "docker-compose.labs-apart.yml"])) + ["a b"]
    assert {k: env.get(k) for k in up_env} == up_env  # every variable up gives compose
    out, err = capsys.readouterr()
    assert "==>" not in out and "==> labs together may use" in err  # up's notes: stderr


def test_compose_needs_arguments_and_a_compose_project(env_file, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "argv", ["invoke", "compose"])
    env_file()
    with pytest.raises(Exit) as info:
        stack.compose(context())
    assert_one_line_error(info, "invoke compose -- ps")
    env_file(SWARM_HOMES=str(tmp_path), **SWARM_SETTINGS)
    monkeypatch.setattr(sys, "argv", ["invoke", "compose", "--", "ps"])
    with pytest.raises(Exit) as info:
        stack.compose(context())
    assert_one_line_error(info, "MODE=swarm", "docker stack ps")


@pytest.mark.parametrize(("settings", "answer", "passed", "noted"), [
    # The hub reads its own (LABS_MEM_LIMIT=auto needs it: below).
    ({"LABS_MEM_LIMIT": "none"}, Result(stderr="permission denied", exited=1), "", False),
    ({"LABS_MEM_LIMIT": "none"}, Result("<no value>\n"), "", False),
    ({"LAB_MEM_LIMIT": "8G"}, Result(f"{4 * 1024**3}\n"), str(4 * 1024**3), False),
    ({"LAB_MEM_LIMIT": "auto"}, Result(f"{4 * 1024**3}\n"), str(4 * 1024**3), True),
])
def test_up_hands_the_hub_the_docker_hosts_memory(env_file, free_port, no_gpu_detection, capsys,
                                                  settings, answer, passed, noted):
    env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port, ADMIN_USERS="", **settings)
    c = context((DOCKER_MEMORY, answer), running=False)
    stack.up(c, build=False)
    (up,) = [call for call in c.run.call_args_list if " up -d --wait " in call.args[0]]
    env = up.kwargs["env"]
    assert env["GPUHUB_LAB_HOST_MEMORY"] == passed
    assert ("labs may use up to 2048M of memory each" in capsys.readouterr().out) is noted


def test_up_no_build_and_timeout(env_file, free_port, no_gpu_detection):
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port, ADMIN_USERS="")
    c = context(running=False)
    stack.up(c, build=False, timeout=30)
    assert not [cmd for cmd in commands(c) if cmd.startswith("docker build")]
    assert commands(c)[-1] == compose_up(path, 30)


def test_up_creates_a_missing_admin_with_the_password_on_stdin(
        env_file, free_port, no_gpu_detection, capsys):
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port, ADMIN_USERS="root1")
    add = compose(path, f"exec -T hub {USERCLI} add root1 --admin --if-missing")
    c = context((add, Result("created user root1 (admin)\n")), running=False)
    stack.up(c, build=False)
    password = call_for(c, add).kwargs["in_stream"].getvalue()[:-1]
    assert len(password) >= 16
    assert all(password not in cmd for cmd in commands(c))
    assert [cmd for cmd in commands(c) if USERCLI in cmd] == [add]  # one process in the hub
    assert f"created admin 'root1' with password: {password}\n" in capsys.readouterr().out


def test_up_keeps_an_admin_that_has_a_password_and_prints_none(
        env_file, free_port, no_gpu_detection, capsys):
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port, ADMIN_USERS="root1")
    add = compose(path, f"exec -T hub {USERCLI} add root1 --admin --if-missing")
    c = context((add, Result(exited=3)), running=False)
    stack.up(c, build=False)
    assert [cmd for cmd in commands(c) if USERCLI in cmd] == [add]
    assert "password" not in capsys.readouterr().out


def test_up_stops_when_the_admin_check_fails(env_file, free_port, no_gpu_detection):
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port)
    c = context((compose(path, f"exec -T hub {USERCLI} add admin --admin --if-missing"),
                 Result(stderr="Traceback...\nsqlite3.OperationalError: no such table\n",
                        exited=1)), running=False)
    with pytest.raises(Exit) as info:
        stack.up(c, build=False)
    assert info.value.message == (
        "error: could not create admin 'admin': sqlite3.OperationalError: no such table")


def test_up_aborts_when_docker_is_not_running(env_file, no_gpu_detection):
    c = context((DOCKER_INFO, Result(stderr="Cannot connect to the Docker daemon", exited=1)))
    with pytest.raises(Exit) as info:
        stack.up(c)
    assert_one_line_error(info, "Docker is not running", "systemctl start docker")
    assert commands(c) == [DOCKER_INFO]
    assert no_gpu_detection == []


def test_up_aborts_when_the_port_is_taken(env_file, no_gpu_detection):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=port)
        c = context(running=False)
        with pytest.raises(Exit) as info:
            stack.up(c)
    assert_one_line_error(info, f"port {port} on 127.0.0.1 is already in use", "HUB_PORT")
    assert commands(c) == [DOCKER_INFO, COMPOSE_VERSION,
                           compose(path, "ps --status running --quiet hub"),
                           compose(path, "ps --status running --quiet proxy")]
    assert no_gpu_detection == []


@pytest.mark.parametrize("hub_running", [False, True], ids=["hub down", "hub up"])
def test_up_does_not_take_its_own_proxy_for_a_taken_port(env_file, no_gpu_detection,
                                                         hub_running):
    """The hub stopped or exited (or runs), its proxy holds the port: not someone else's."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=port, ADMIN_USERS="")
        c = context((compose(path, "ps --status running --quiet proxy"), Result("c0ffee\n")),
                    running=hub_running)
        stack.up(c, build=False)
    assert commands(c)[-1] == compose_up(path, 180)


def test_restart_starts_the_stack_when_the_hub_is_not_running(env_file, free_port,
                                                              no_gpu_detection, capsys):
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port, ADMIN_USERS="")
    c = context(running=False)
    stack.restart(c)
    assert commands(c)[-1] == compose_up(path, 180)
    assert compose(path, "restart hub") not in commands(c)
    assert "the hub is not running: starting the stack" in capsys.readouterr().out


def test_up_after_the_proxy_exited_restarts_the_hub_for_its_routes(env_file, free_port,
                                                                   no_gpu_detection):
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port, ADMIN_USERS="")
    c = context((compose(path, "ps -q hub"), Result("f00d\n")),
                ("docker inspect -f '{{.State.Health.Status}}' f00d", Result("healthy\n")),
                running=True)
    stack.up(c, build=False)
    up = compose_up(path, 180)
    assert commands(c)[commands(c).index(up) + 1] == compose(path, "restart hub")


def test_up_aborts_when_the_shared_data_dir_is_missing(env_file, tmp_path, no_gpu_detection):
    env_file(SHARED_DATA_DIR=str(tmp_path / "missing"))
    c = context(running=False)
    with pytest.raises(Exit) as info:
        stack.up(c)
    assert_one_line_error(info, "SHARED_DATA_DIR=", "is not a folder on this host")
    assert commands(c) == [], "a bad setting must stop before any docker command"


@pytest.mark.parametrize("bridge", ["<no value>", "br-5e1f0c2a9d7b", ""])
def test_up_refuses_a_labs_network_the_firewall_cannot_name(env_file, free_port,
                                                              no_gpu_detection, bridge):
    env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port)
    c = context((labs_bridge_check(), Result(bridge + " false\n")), running=False)
    with pytest.raises(Exit) as info:
        stack.up(c)
    assert_one_line_error(info, "the labs network gpuhub-labs has the bridge",
                          "'gpuhub-labs'", "run `invoke down`, then `invoke up`")
    assert not [cmd for cmd in commands(c) if cmd.startswith("docker build")]


def test_up_refuses_a_labs_network_with_ipv6(env_file, free_port, no_gpu_detection):
    env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port)
    c = context((labs_bridge_check(), Result("gpuhub-labs true\n")), running=False)
    with pytest.raises(Exit) as info:
        stack.up(c)
    assert_one_line_error(info, "the labs network gpuhub-labs has IPv6 on",
                          "run `invoke down`, then `invoke up`")
    assert not [cmd for cmd in commands(c) if cmd.startswith("docker build")]


def test_up_stops_a_helper_switched_off_since_the_last_up(env_file, free_port, no_gpu_detection):
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port, ADMIN_USERS="",
                    LAB_FIREWALL="false")
    listed = ("docker ps -aq --filter label=com.docker.compose.project=gpuhub "
              "--filter label=com.docker.compose.service=lab-firewall")
    c = context((listed, Result("a1b2\n")), running=False)
    stack.up(c, build=False)
    up = compose(path, "up -d --wait --wait-timeout 180",
                 ["docker-compose.no-lab-firewall.yml", "docker-compose.gpu-sampler.yml"])
    labs = "docker ps -q --filter label=gpuhub.project=gpuhub"
    assert commands(c)[4:] == [listed, "docker stop -t 30 a1b2", "docker rm -f a1b2", labs,
                               remove_firewall_rules(), DOCKER_MEMORY, CGROUP_INFO, *HOST_PROBES,
                               *hub_database_check(path, ["docker-compose.no-lab-firewall.yml"]),
                               up]
    assert labs_bridge_check() not in commands(c), "no firewall: any bridge name will do"


def test_up_shows_the_hub_logs_when_it_never_gets_healthy(env_file, free_port, no_gpu_detection):
    path = env_file(HUB_BIND_ADDRESS="127.0.0.1", HUB_PORT=free_port)
    c = context((compose_up(path, 180), Result(exited=1)),
                running=False)
    with pytest.raises(Exit) as info:
        stack.up(c, build=False)
    assert_one_line_error(info, "the hub did not become healthy")
    assert commands(c)[-1] == compose(path, "logs --tail 40 hub")


# --- GPU detection (a fake nvidia-smi on PATH) ---------------------------------------

@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """Install an nvidia-smi on PATH that prints ``output`` and exits with ``code``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def install(output: str, code: int = 0):
        script = bin_dir / "nvidia-smi"
        script.write_text(f"#!/bin/sh\nprintf '%s' {shlex.quote(output)}\nexit {code}\n")
        script.chmod(0o755)

    monkeypatch.setenv("PATH", str(bin_dir))
    return install


TWO_GPUS = "0, GPU-aaa, Tesla T4, 15360\n1, GPU-bbb, Tesla T4, 15360\n"


def test_detect_gpus_uses_nvidia_smi(env_file, fake_nvidia_smi):
    fake_nvidia_smi(TWO_GPUS)
    assert [g.device_id for g in composestack.detect_gpus(project_mod.load())] == ["GPU-aaa", "GPU-bbb"]


def test_detect_gpus_applies_gpu_devices(env_file, fake_nvidia_smi):
    env_file(GPU_DEVICES="1")
    fake_nvidia_smi(TWO_GPUS)
    assert [g.device_id for g in composestack.detect_gpus(project_mod.load())] == ["GPU-bbb"]


def test_detect_gpus_refuses_a_gpu_that_is_not_there(env_file, fake_nvidia_smi):
    env_file(GPU_DEVICES="0,4")
    fake_nvidia_smi(TWO_GPUS)
    with pytest.raises(Exit) as info:
        composestack.detect_gpus(project_mod.load())
    assert_one_line_error(info, "GPU_DEVICES names '4'", "lists only GPUs 0, 1")


def test_detect_gpus_without_nvidia_smi_warns_and_goes_cpu_only(env_file, tmp_path, monkeypatch,
                                                                 capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert composestack.detect_gpus(project_mod.load()) == []
    assert "no NVIDIA GPU found on this host" in capsys.readouterr().err


def test_a_failing_nvidia_smi_stops_invoke_up_with_its_own_words(env_file, fake_nvidia_smi):
    # As a real driver/library mismatch prints it: two lines, on stdout, nothing on stderr.
    fake_nvidia_smi("Failed to initialize NVML: Driver/library version mismatch\n"
                    "NVML library version: 570.124\n", code=18)
    with pytest.raises(Exit) as info:
        composestack.detect_gpus(project_mod.load())
    assert_one_line_error(info, "nvidia-smi failed (Failed to initialize NVML: Driver/library "
                                "version mismatch; NVML library version: 570.124)",
                          "GPU_DEVICES=none")


@pytest.fixture
def double_nvidia_smi(tmp_path, monkeypatch):
    """The NVIDIA test double's own nvidia-smi on PATH, as the host of ``inventory`` sees it."""

    def install(inventory: str, state: str = ""):
        double = Path(__file__).resolve().parents[1] / "gpu_double"
        loader = importlib.machinery.SourceFileLoader(
            "gpu_double_hook_for_tasks", str(double / "nvidia-container-runtime-hook"))
        hook = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
        loader.exec_module(hook)
        tsv = tmp_path / "inventory.tsv"
        tsv.write_bytes(hook.to_tsv(json.loads((double / inventory).read_text()), "all"))
        (tmp_path / "gpus.tsv").write_text(state)
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        script = bin_dir / "nvidia-smi"
        script.write_text(f"#!/bin/sh\nGPUHUB_FAKE_GPUS_FILE={tsv} "
                          f"GPUHUB_FAKE_GPU_STATE={tmp_path / 'gpus.tsv'} "
                          f"exec sh {double / 'nvidia-smi'} \"$@\"\n")
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")

    return install


MIG_DOUBLE = json.loads((Path(__file__).resolve().parents[1] / "gpu_double"
                         / "inventory-mig.json").read_text())["gpus"]


def test_detect_gpus_hands_out_the_mig_instances_of_a_gpu_in_mig_mode(env_file, double_nvidia_smi):
    """On the double's MIG inventory: GPU 0's four instances, then GPU 1 whole; never GPU 0."""
    double_nvidia_smi("inventory-mig.json")
    found = composestack.detect_gpus(project_mod.load())
    assert [(g.index, g.device_id, g.parent, g.mig_profile) for g in found] == [
        (f"0:{i}", m["uuid"], MIG_DOUBLE[0]["uuid"], m["profile"])
        for i, m in enumerate(MIG_DOUBLE[0]["mig"])] + [("1", MIG_DOUBLE[1]["uuid"], "", "")]


def test_detect_gpus_applies_gpu_devices_to_mig_instances(env_file, double_nvidia_smi):
    env_file(GPU_DEVICES=f"0:2,{MIG_DOUBLE[0]['mig'][0]['uuid']}")
    double_nvidia_smi("inventory-mig.json")
    assert [g.device_id for g in composestack.detect_gpus(project_mod.load())] == [
        MIG_DOUBLE[0]["mig"][2]["uuid"], MIG_DOUBLE[0]["mig"][0]["uuid"]]


def test_detect_gpus_on_the_doubles_t4s_has_no_mig(env_file, double_nvidia_smi):
    double_nvidia_smi("inventory-4.json")
    assert [g.index for g in composestack.detect_gpus(project_mod.load())] == ["0", "1", "2", "3"]


def test_gpu_devices_none_never_runs_nvidia_smi(env_file, fake_nvidia_smi, capsys):
    env_file(GPU_DEVICES="none")
    fake_nvidia_smi("this must not be parsed")
    assert composestack.detect_gpus(project_mod.load()) == []
    assert capsys.readouterr().err == ""


# --- users ------------------------------------------------------------------------

def usercli(path, args: str) -> str:
    return compose(path, f"exec -T hub {USERCLI} {args}")


@pytest.mark.parametrize("name", ["Alice", "../x", "a b", ""])
def test_adduser_invalid_name_stops_before_docker(env_file, name):
    c = MockContext(run={})
    with pytest.raises(Exit) as info:
        users.adduser(c, name, password_stdin=True)
    assert_one_line_error(info, f"invalid user name {name!r}")
    assert c.run.call_count == 0


def test_adduser_passes_the_password_on_stdin_only(env_file, monkeypatch, capsys):
    path = env_file()
    password = "correct horse 42"
    monkeypatch.setattr(sys, "stdin", io.StringIO(password + "\n"))
    add = usercli(path, "add alice --admin")
    c = context((add, Result("created user alice (admin)\n")))
    users.adduser(c, "alice", admin=True, password_stdin=True)
    assert commands(c)[-1] == add
    kwargs = call_for(c, add).kwargs
    assert kwargs["in_stream"].getvalue() == password + "\n"
    assert all(password not in cmd for cmd in commands(c))
    assert password not in kwargs["env"].values()
    assert capsys.readouterr().out == "created user alice (admin)\n"


def test_adduser_shows_the_refusal_of_the_hub_in_one_line(env_file, monkeypatch):
    path = env_file()
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse 42\n"))
    c = context((usercli(path, "add alice"),
                 Result(stderr="error: user 'alice' already exists; use `invoke passwd alice`\n",
                        exited=2)))
    with pytest.raises(Exit) as info:
        users.adduser(c, "alice", password_stdin=True)
    assert info.value.message == "error: user 'alice' already exists; use `invoke passwd alice`"


def test_adduser_empty_password_on_stdin_is_refused(env_file, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    c = context()
    with pytest.raises(Exit) as info:
        users.adduser(c, "alice", password_stdin=True)
    assert_one_line_error(info, "the password is empty")
    assert not [cmd for cmd in commands(c) if f"{USERCLI} add" in cmd]


def test_adduser_without_a_terminal_asks_for_password_stdin(env_file, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("ignored\n"))
    c = context()
    with pytest.raises(Exit) as info:
        users.adduser(c, "alice")
    assert_one_line_error(info, "--password-stdin")


def test_read_new_password_asks_twice():
    tty = io.StringIO()
    tty.isatty = lambda: True
    answers = iter(["s3cret-one", "s3cret-two"])
    with pytest.raises(Exit) as info:
        users.read_new_password(False, stream=tty, prompt=lambda _: next(answers))
    assert_one_line_error(info, "the two passwords differ; nothing was changed")
    assert users.read_new_password(False, stream=tty, prompt=lambda _: "same-pass") == "same-pass"


def test_adduser_needs_a_running_hub(env_file, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse 42\n"))
    c = context(running=False)
    with pytest.raises(Exit) as info:
        users.adduser(c, "alice", password_stdin=True)
    assert_one_line_error(info, "the hub of project 'gpuhub' is not running", "invoke up")


def test_a_user_task_asks_docker_nothing_more_once_the_hub_runs(env_file, capsys):
    """`invoke up` checked Docker and Compose before the hub ran: a user task only asks
    whether it runs (0.3 s less each)."""
    path = env_file()
    c = context((usercli(path, "list"), Result("[]\n")))
    users.users(c, json=True)
    assert DOCKER_INFO not in commands(c) and COMPOSE_VERSION not in commands(c)
    assert json.loads(capsys.readouterr().out) == []


def test_a_user_task_says_docker_is_not_running_when_it_is_not(env_file):
    c = context((DOCKER_INFO, Result(stderr="Cannot connect to the Docker daemon", exited=1)),
                running=False)
    with pytest.raises(Exit) as info:
        users.users(c)
    assert_one_line_error(info, "Docker is not running", "docker group")


VOLUME_INSPECT = "docker volume inspect gpuhub-home-alice"


def test_adduser_refuses_a_name_whose_work_volume_was_kept(env_file, monkeypatch):
    path = env_file()
    stdin = io.StringIO("correct horse 42\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    c = context((usercli(path, "exists alice"), Result(exited=3)),
                (VOLUME_INSPECT, Result('[{"Name": "gpuhub-home-alice"}]\n')))
    with pytest.raises(Exit) as info:
        users.adduser(c, "alice", password_stdin=True)
    assert_one_line_error(
        info, "work volume gpuhub-home-alice already exists, kept from an earlier user named "
              "'alice'", "`invoke adduser alice --reuse-data`",
        "`invoke deluser alice --purge-data`", "`docker volume rm gpuhub-home-alice`")
    assert not [cmd for cmd in commands(c) if f"{USERCLI} add" in cmd], "nothing is created"
    assert stdin.tell() == 0, "refused before asking for a password"


def test_adduser_reuse_data_gives_the_kept_volume_knowingly(env_file, monkeypatch, capsys):
    path = env_file()
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse 42\n"))
    add = usercli(path, "add alice")
    c = context((usercli(path, "exists alice"), Result(exited=3)), (VOLUME_INSPECT, Result("[]\n")),
                (add, Result("created user alice\n")))
    users.adduser(c, "alice", password_stdin=True, reuse_data=True)
    assert commands(c)[-1] == add
    assert capsys.readouterr().out == (
        "created user alice\n"
        "alice now has the work volume gpuhub-home-alice, left by the earlier user of that name\n")


def test_adduser_of_a_new_name_checks_its_escaped_volume_and_goes_on(env_file, monkeypatch, capsys):
    path = env_file()
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse 42\n"))
    add = usercli(path, "add ann-lee")
    inspect = "docker volume inspect gpuhub-home-ann-2dlee"
    c = context((inspect, Result(stderr="Error response from daemon: get gpuhub-home-ann-2dlee: "
                                        "no such volume\n", exited=1)),
                (add, Result("created user ann-lee\n")))
    users.adduser(c, "ann-lee", password_stdin=True)
    # No kept volume: nobody's files to hand over, so the hub is not asked who exists.
    assert commands(c)[-2:] == [inspect, add]
    assert capsys.readouterr().out == "created user ann-lee\n"


def test_adduser_of_an_existing_user_leaves_the_refusal_to_the_hub(env_file, monkeypatch):
    path = env_file()
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse 42\n"))
    c = context((VOLUME_INSPECT, Result('[{"Name": "gpuhub-home-alice"}]\n')),
                (usercli(path, "exists alice"), Result()),
                (usercli(path, "add alice"), Result(stderr="error: user 'alice' already exists\n",
                                                    exited=2)))
    with pytest.raises(Exit) as info:
        users.adduser(c, "alice", password_stdin=True)
    # alice's own volume is no earlier user's: the refusal is the hub's, not --reuse-data's.
    assert info.value.message == "error: user 'alice' already exists"


@pytest.mark.parametrize(("inspect", "exists", "says"), [
    (Result('[{"Name": "gpuhub-home-alice"}]\n'),
     Result(stderr="Traceback...\nrequests.ConnectionError: hub down\n", exited=1),
     "could not check whether user 'alice' exists: requests.ConnectionError: hub down"),
    (Result(stderr="permission denied while trying to connect\n", exited=1), None,
     "could not check for a kept work volume gpuhub-home-alice: permission denied"),
])
def test_adduser_that_cannot_check_refuses(env_file, monkeypatch, inspect, exists, says):
    path = env_file()
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse 42\n"))
    pairs = [(VOLUME_INSPECT, inspect)] + ([(usercli(path, "exists alice"), exists)] if exists is not None else [])
    c = context(*pairs)
    with pytest.raises(Exit) as info:
        users.adduser(c, "alice", password_stdin=True)
    assert_one_line_error(info, says)
    assert not [cmd for cmd in commands(c) if f"{USERCLI} add" in cmd]


SWARM_SETTINGS = {"MODE": "swarm", "REGISTRY": "registry.example.org:5000"}


def swarm_context(path, *pairs):
    """A manager whose hub runs (swarm mode), answering ``pairs``."""
    project = project_mod.load(environ={"GPUHUB_ENV_FILE": str(path)})
    running = (project.hub_container(), Result("f00d\n"))
    return project, context(running, *[(project.exec_hub(f"{USERCLI} {args}"), result)
                                       for args, result in pairs])


def test_swarm_adduser_refuses_a_name_whose_folder_under_swarm_homes_was_kept(
        env_file, tmp_path, monkeypatch):
    homes = tmp_path / "homes"
    (homes / "ann-2dlee").mkdir(parents=True)
    path = env_file(SWARM_HOMES=str(homes), **SWARM_SETTINGS)
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse 42\n"))
    _, c = swarm_context(path, ("exists ann-lee", Result(exited=3)))
    with pytest.raises(Exit) as info:
        users.adduser(c, "ann-lee", password_stdin=True)
    assert_one_line_error(info, f"work folder {homes}/ann-2dlee already exists", "--reuse-data",
                          "`invoke deluser ann-lee --purge-data`", f"`sudo rm -r {homes}/ann-2dlee`")
    assert not [cmd for cmd in commands(c) if "volume" in cmd or f"{USERCLI} add" in cmd]


def test_swarm_adduser_of_a_new_name_goes_on(env_file, tmp_path, monkeypatch, capsys):
    homes = tmp_path / "homes"
    (homes / "bob").mkdir(parents=True)
    path = env_file(SWARM_HOMES=str(homes), **SWARM_SETTINGS)
    monkeypatch.setattr(sys, "stdin", io.StringIO("correct horse 42\n"))
    project, c = swarm_context(path, ("exists ann-lee", Result(exited=3)),
                               ("add ann-lee", Result("created user ann-lee\n")))
    users.adduser(c, "ann-lee", password_stdin=True)
    assert commands(c)[-1] == project.exec_hub(f"{USERCLI} add ann-lee")
    assert capsys.readouterr().out == "created user ann-lee\n"


def test_passwd_refuses_an_unknown_user_before_reading_a_password(env_file, monkeypatch):
    path = env_file()
    stdin = io.StringIO("correct horse 42\n")
    monkeypatch.setattr(sys, "stdin", stdin)
    c = context((usercli(path, "exists nobody"), Result(exited=3)))
    with pytest.raises(Exit) as info:
        users.passwd(c, "nobody", password_stdin=True)
    assert_one_line_error(info, "no user 'nobody'", "invoke adduser nobody")
    assert stdin.tell() == 0


def test_passwd_sends_the_new_password_on_stdin(env_file, monkeypatch, capsys):
    path = env_file()
    monkeypatch.setattr(sys, "stdin", io.StringIO("new horse 43\n"))
    change = usercli(path, "passwd alice")
    c = context((usercli(path, "exists alice"), Result()),
                (change, Result("password of alice changed\n")))
    users.passwd(c, "alice", password_stdin=True)
    assert call_for(c, change).kwargs["in_stream"].getvalue() == "new horse 43\n"
    assert capsys.readouterr().out == "password of alice changed\n"


@pytest.mark.parametrize(("purge", "args"), [(False, "delete bob"),
                                             (True, "delete bob --purge-data")])
def test_deluser(env_file, capsys, purge, args):
    path = env_file()
    delete = usercli(path, args)
    c = context((delete, Result("deleted user bob\n")))
    users.deluser(c, "bob", purge_data=purge)
    assert commands(c)[-1] == delete
    assert call_for(c, delete).kwargs["in_stream"] is False
    assert capsys.readouterr().out == "deleted user bob\n"


ROWS = [
    {"name": "admin", "admin": True, "server": "ready",
     "last_activity": "2026-05-01T10:00:00Z", "has_password": True, "groups": []},
    {"name": "bob", "admin": False, "server": "stopped", "last_activity": None,
     "has_password": True, "groups": ["gpu-users", "students"]},
]


def test_users_json(env_file, capsys):
    path = env_file()
    c = context((usercli(path, "list"), Result(json.dumps(ROWS) + "\n")))
    users.users(c, json=True)
    assert json.loads(capsys.readouterr().out) == ROWS


def test_users_table(env_file, capsys):
    path = env_file()
    c = context((usercli(path, "list"), Result(json.dumps(ROWS) + "\n")))
    users.users(c)
    assert capsys.readouterr().out.splitlines() == [
        f"{'USER':<24}{'ADMIN':<7}{'LAB':<10}{'LAST ACTIVITY':<30}GROUPS",
        f"{'admin':<24}{'yes':<7}{'ready':<10}{'2026-05-01T10:00:00Z':<30}-",
        f"{'bob':<24}{'no':<7}{'stopped':<10}{'-':<30}gpu-users,students",
    ]


# --- down, restart, status, logs ------------------------------------------------------

def test_down_stops_the_labs_then_the_hub(env_file):
    path = env_file(COMPOSE_PROJECT_NAME="gpuhub-t")
    ps = "docker ps -q --filter label=gpuhub.project=gpuhub-t"
    c = context((ps, Result("aaa\nbbb\n")))
    stack.down(c)
    # The mock still lists the labs after `docker stop`: the firewall's rules stay.
    assert commands(c)[2:] == [ps, "docker stop aaa bbb", compose(path, "down"), ps]


def test_down_removes_the_firewall_rules_once_no_lab_runs(env_file):
    path = env_file(COMPOSE_PROJECT_NAME="gpuhub-t")
    ps = "docker ps -q --filter label=gpuhub.project=gpuhub-t"
    c = context((ps, Result("")))
    stack.down(c)
    assert commands(c)[2:] == [ps, compose(path, "down"), ps,
                               remove_firewall_rules("gpuhub-t")]


def test_down_no_labs_leaves_the_labs_and_the_rules(env_file, capsys):
    path = env_file()
    ps = "docker ps -q --filter label=gpuhub.project=gpuhub"
    c = context((ps, Result("aaa\n")))
    stack.down(c, labs=False)
    assert commands(c)[2:] == [compose(path, "down"), ps]
    assert "lab firewall rules kept: 1 lab(s) of gpuhub still run" in capsys.readouterr().out


def test_restart_waits_until_healthy(env_file, capsys):
    path = env_file()
    c = context((compose(path, "ps -q hub"), Result("f00d\n")),
                ("docker inspect -f '{{.State.Health.Status}}' f00d", Result("healthy\n")))
    stack.restart(c)
    assert compose(path, "restart hub") in commands(c)
    assert capsys.readouterr().out.endswith("hub restarted\n")


def test_wait_healthy_times_out_with_the_last_state(env_file, monkeypatch):
    monkeypatch.setattr(composestack.time, "sleep", lambda seconds: None)
    path = env_file()
    c = context((compose(path, "ps -q hub"), Result("f00d\n")),
                ("docker inspect -f '{{.State.Health.Status}}' f00d", Result("starting\n")))
    with pytest.raises(Exit) as info:
        composestack.wait_healthy(c, project_mod.load(), timeout=0.01)
    assert_one_line_error(info, "not healthy after 0s (last state: starting)")
    assert commands(c)[-1] == compose(path, "logs --tail 40 hub")


def test_logs(env_file):
    path = env_file()
    c = context()
    stack.logs(c, follow=True, tail=50)
    assert commands(c)[-1] == compose(path, "logs --tail 50 --follow hub")


def test_status_of_a_project_with_nothing_running(env_file, capsys):
    env_file()
    c = context()
    stack.status(c)
    assert commands(c)[2:] == ["docker ps -aq --filter label=com.docker.compose.project=gpuhub",
                               "docker ps -q --filter label=gpuhub.project=gpuhub"]
    assert capsys.readouterr().out == ("No service of this project exists: `invoke up`.\n\n"
                                       "No lab is running.\n")


# --- gpus -------------------------------------------------------------------------------

BOARD_COMMAND = "exec -T hub python3 -m gpuhub.hub.hubmodes"
INVENTORY = [Gpu(str(i), f"GPU-{u}", "NVIDIA A100", 40960) for i, u in enumerate(("aaa", "bbb", "ccc"))]
# Labels as the lab image brings them too: values with "," and "=" in them, one of them
# looking like gpuhub's own labels.
BOB = {"Id": "b0b" * 21 + "b", "Labels": {
    "gpuhub.project": "gpuhub", "gpuhub.user": "bob", "gpuhub.gpus": "GPU-aaa,GPU-bbb",
    "gpuhub.since": "2026-05-01T10:00:00+00:00", "gpuhub.profile": "gpu2",
    "maintainer": "Jupyter Project <jupyter@googlegroups.com>",
    "org.example.note": "gpuhub.user=mallory,gpuhub.gpus=GPU-ccc"}}


def board_json(samples: dict | None = None, now: float = 1_000_000.0) -> str:
    """What the hub prints: telemetry's board of INVENTORY, bob's lab and ``samples``."""
    from gpuhub.hub import telemetry

    path = Path(tempfile.mkdtemp()) / "gpus.json"
    if samples is not None:
        path.write_text(json.dumps(samples))
    board = telemetry.compose_board("gpuhub", "exclusive", INVENTORY, lambda: [BOB], path, now)
    return json.dumps(board.as_json())


SAMPLES = {"version": 1, "taken_at": 999_998.0, "interval": 5, "idle_below": 5, "error": "",
           "gpus": [{"index": "0", "uuid": "GPU-aaa", "name": "NVIDIA A100", "utilisation": 85,
                     "memory_used_mib": 9216, "memory_total_mib": 40960, "idle_since": None,
                     "history": [[999_993.0, 80, 9000], [999_998.0, 85, 9216]]},
                    {"index": "1", "uuid": "GPU-bbb", "name": "NVIDIA A100", "utilisation": 0,
                     "memory_used_mib": 0, "memory_total_mib": 40960,
                     "idle_since": 1_000_000.0 - 3900, "history": []}],
           "processes": []}


def test_gpus_prints_the_hubs_table_with_utilisation_and_idle_time(env_file, capsys):
    path = env_file()
    c = context((compose(path, BOARD_COMMAND), Result(board_json(SAMPLES))))
    stack.gpus(c)
    assert commands(c) == [compose(path, "ps --status running --quiet hub"),
                           compose(path, BOARD_COMMAND)]
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["GPU", "MODEL", "HELD", "BY", "SINCE", "UTIL", "MEMORY", "USED",
                                "IDLE", "POLICY"]
    assert "bob (gpu2)" in table[1] and "85 %" in table[1] and "9216 / 40960 MiB" in table[1]
    assert "1 h 05 min" in table[2] and "0 %" in table[2]
    # GPU-ccc: not sampled (the sampler did not report it), and free.
    assert "free" in table[3] and "? / 40960 MiB" in table[3]
    assert "mallory" not in "\n".join(table)


def test_gpus_json_is_the_rows(env_file, capsys):
    path = env_file()
    c = context((compose(path, BOARD_COMMAND), Result(board_json(SAMPLES))))
    stack.gpus(c, json=True)
    rows = json.loads(capsys.readouterr().out)
    assert [(r["uuid"], r["held_by"], r["utilisation"]) for r in rows] == [
        ("GPU-aaa", ["bob"], 85), ("GPU-bbb", ["bob"], 0), ("GPU-ccc", [], None)]
    assert rows[0]["holders"] == [{"user": "bob", "profile": "gpu2",
                                   "since": "2026-05-01T10:00:00+00:00", "memory_used_mib": 9216}]
    assert rows[0]["history"] == [80, 85]


def test_gpus_shows_who_waits_in_line(env_file, capsys):
    import time

    path = env_file()
    board = json.loads(board_json(SAMPLES))
    board["waiting"] = [{"user": "q4", "gpus": 1, "since": time.time() - 125},
                        {"user": "q5", "gpus": 2, "since": time.time() - 30}]
    c = context((compose(path, BOARD_COMMAND), Result(json.dumps(board))))
    stack.gpus(c)
    out = capsys.readouterr().out
    assert "Waiting for a GPU, in order: q4 (1 GPU, 2 min), q5 (2 GPUs, 30 s)" in out


def test_gpus_says_why_there_is_no_utilisation(env_file, capsys):
    path = env_file()
    c = context((compose(path, BOARD_COMMAND), Result(board_json(None))))
    stack.gpus(c)
    out = capsys.readouterr().out
    assert "No utilisation: no reading yet: the gpu-sampler service has written none" in out


def test_gpus_watch_redraws_until_ctrl_c(env_file, capsys, monkeypatch):
    import time

    path = env_file()
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    c = context((compose(path, BOARD_COMMAND), Result(board_json(SAMPLES))))
    stack.gpus(c, watch=True)
    assert sleeps == [5, 5]
    assert commands(c).count(compose(path, BOARD_COMMAND)) == 2
    assert capsys.readouterr().out.count("\033[H\033[2J") == 2


def test_gpus_failing_hub_is_one_line(env_file):
    path = env_file()
    c = context((compose(path, BOARD_COMMAND), Result(
        stderr="error: could not read the GPUs: Cannot connect to the Docker daemon\n", exited=1)))
    with pytest.raises(Exit) as info:
        stack.gpus(c)
    assert_one_line_error(info, "could not read the GPUs from the hub",
                          "Cannot connect to the Docker daemon")


def test_status_is_two_short_tables(env_file, capsys):
    env_file()
    services = "docker ps -aq --filter label=com.docker.compose.project=gpuhub"
    labs = "docker ps -q --filter label=gpuhub.project=gpuhub"
    started = "2026-12-01T20:00:00.123456789Z"
    inspected = [
        {"Id": "aaa111", "Config": {"Labels": {"com.docker.compose.service": "hub"}},
         "State": {"Status": "running", "StartedAt": started, "Health": {"Status": "healthy"}}},
        {"Id": "bbb222", "Config": {"Labels": {"com.docker.compose.service": "proxy"}},
         "State": {"Status": "exited", "FinishedAt": started}},
        {"Id": "ccc333", "Config": {"Labels": {
            "gpuhub.user": "bob", "gpuhub.profile": "gpu1", "gpuhub.gpus": "GPU-aaa",
            "gpuhub.since": "2026-12-01T21:00:00+00:00",
            "maintainer": "Jupyter Project <jupyter@googlegroups.com>"}},
         "State": {"Status": "running"}},
    ]
    c = context((services, Result("aaa111\nbbb222\n")), (labs, Result("ccc333\n")),
                ("docker inspect aaa111 bbb222 ccc333", Result(json.dumps(inspected))))
    stack.status(c)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["SERVICE", "STATE", "HEALTH", "SINCE"]
    assert out[1].split()[:5] == ["hub", "running", "healthy", "2026-12-01", "20:00"]
    assert out[2].split()[:4] == ["proxy", "exited", "-", "2026-12-01"]
    assert out[4].split() == ["USER", "PROFILE", "GPUS", "SINCE", "IMAGE"]
    assert out[5].split()[:5] == ["bob", "gpu1", "GPU-aaa", "2026-12-01", "21:00"]
    assert max(len(line) for line in out) < 80
