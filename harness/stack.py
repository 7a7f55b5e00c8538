"""A real gpuhub stack for tests, driven through the real `invoke` tasks.

Every run gets its own compose project (``gpuhubtest-<random>``), port and settings
file, so it never touches a production stack on the same host. Settings for the test
stack come from ``GPUHUB_TEST_<SETTING>`` environment variables (CI points the base
images at locally built stand-ins that way).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import ROOT

if TYPE_CHECKING:
    from .hub import HubUser

PREFIX = "gpuhubtest-"
BLOCKED_FOR_TESTS = "198.18.0.0/15"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_from_env(environ=os.environ) -> dict[str, str]:
    """Settings a test stack inherits from GPUHUB_TEST_* variables."""
    return {k[len("GPUHUB_TEST_"):]: v for k, v in environ.items() if k.startswith("GPUHUB_TEST_")}


@dataclass
class Stack:
    """One test deployment: its settings file, and helpers to run tasks against it."""

    workdir: Path
    settings: dict[str, str]
    admin_passwords: dict[str, str] = field(default_factory=dict)
    # The gpuhub checkout whose tasks run (the upgrade test's is an older release's).
    root: Path = ROOT

    @classmethod
    def create(cls, workdir: Path, root: Path = ROOT, **overrides: str) -> Stack:
        project = PREFIX + secrets.token_hex(3)
        settings = {
            "COMPOSE_PROJECT_NAME": project,
            "HUB_BIND_ADDRESS": "127.0.0.1",
            "HUB_PORT": str(free_port()),
            "ADMIN_USERS": "admin",
            "HUB_IMAGE": "gpuhub-hub:test",
            "LAB_IMAGE": "gpuhub-lab:test",
            "DOCKER_PROXY_IMAGE": "gpuhub-docker-proxy:test",
            "LAB_FIREWALL_IMAGE": "gpuhub-lab-firewall:test",
            "SPAWN_TIMEOUT": "180",
            # The telemetry tests wait for readings; the default is 5 s.
            "GPU_SAMPLE_INTERVAL": "2",
            "SECRETS_DIR": str(workdir / "secrets"),
        }
        settings.update(settings_from_env())
        settings.update(overrides)
        if settings.get("MODE", "compose") == "compose":  # swarm mode has no lab firewall
            # A benchmarking range (RFC 2544) no real network uses: the lab firewall's test
            # puts a fake metadata service there, in a network namespace of its own.
            settings.setdefault("LAB_BLOCKED_NETWORKS", BLOCKED_FOR_TESTS)
        stack = cls(workdir=workdir, settings=settings, root=root)
        stack.write_env()
        return stack

    @property
    def project(self) -> str:
        return self.settings["COMPOSE_PROJECT_NAME"]

    @property
    def env_file(self) -> Path:
        return self.workdir / f"{self.project}.env"

    @property
    def url(self) -> str:
        # HUB_DOMAIN (localhost unless a test sets it): the hub takes logins there only.
        return f"http://{self.settings.get('HUB_DOMAIN', 'localhost')}:{self.settings['HUB_PORT']}"

    def write_env(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.settings.items()))

    def invoke(self, *args: str, stdin: str | None = None, check: bool = True,
               timeout: float = 1800, env: dict | None = None) -> subprocess.CompletedProcess:
        """Run a real task (`invoke ARGS`) against this stack."""
        full_env = {**os.environ, "GPUHUB_ENV_FILE": str(self.env_file), **(env or {})}
        cmd = [sys.executable, "-m", "invoke", *args]
        result = subprocess.run(cmd, cwd=self.root, env=full_env, input=stdin, text=True,
                                capture_output=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(
                f"`invoke {' '.join(args)}` exited {result.returncode}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}\n"
                f"hub logs:\n{self.logs()}")
        return result

    def up(self, *args: str) -> subprocess.CompletedProcess:
        result = self.invoke("up", *args)
        for name, password in re.findall(r"created admin '([^']+)' with password: (\S+)",
                                         result.stdout):
            self.admin_passwords[name] = password
        return result

    def compose_files_and_env(self) -> tuple[list[str], dict[str, str]]:
        """The compose files and variables `invoke` would use for this stack's settings."""
        from invoke.exceptions import Exit

        from gpuhub.tasks.project import load

        try:
            project = load(root=self.root, environ={"GPUHUB_ENV_FILE": str(self.env_file)})
        except Exit:  # a test of bad settings: the base file, with the settings as given
            return ["docker-compose.yml"], {**self.settings, "GPUHUB_ENV_FILE": str(self.env_file)}
        try:
            files, env = self.host_protection(project)
        except Exit:  # settings `invoke up` refused (a test of that): nothing of it runs
            files, env = (), {}
        return [*project.compose_files, *files], project.env(**env)

    def host_protection(self, project=None) -> tuple[tuple[str, ...], dict[str, str]]:
        """The files and variables `invoke up` adds to keep labs apart and under one memory
        limit (gpuhub.tasks.composestack.host_protection), for compose run by hand."""
        from invoke import Config, Context

        from gpuhub.tasks import composestack
        from gpuhub.tasks.project import load

        project = project or load(root=self.root, environ={"GPUHUB_ENV_FILE": str(self.env_file)})
        if project.swarm:
            return (), {}
        c = Context(Config(overrides={"run": {"in_stream": False}}))
        return composestack.host_protection(c, project, composestack.docker_host_memory(c))

    def compose(self, *args: str, check: bool = False,
                stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run compose by hand, as an admin would: the files and variables invoke uses."""
        files, variables = self.compose_files_and_env()
        cmd = ["docker", "compose", "--project-directory", str(self.root)]
        for name in files:
            if (self.root / name).exists():  # an older release has fewer overrides
                cmd += ["-f", str(self.root / name)]
        cmd += ["--env-file", str(self.env_file), *args]
        env = {**os.environ, **variables}
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=check,
                              input=stdin)

    def logs(self, tail: int = 150, service: str | None = None) -> str:
        """The last ``tail`` lines of every service (12 000 characters at most, for a failure
        message), or all ``tail`` lines of one ``service``, for an assertion to search."""
        out = self.compose("logs", "--no-color", "--tail", str(tail), *([service] if service else []))
        text = out.stdout + out.stderr
        return text if service else text[-12000:]

    def signed_up(self, name: str, password: str | None = None) -> HubUser:
        """A new account made with the real `invoke adduser --password-stdin` (password
        ``<name>-pw-12345`` unless given), logged in through the form, with an API token."""
        from .hub import HubUser

        password = password if password is not None else f"{name}-pw-12345"
        self.invoke("adduser", name, "--password-stdin", stdin=password + "\n")
        return HubUser.signed_in(self.url, name, password)

    def add_users(self, passwords: dict[str, str]) -> None:
        """Test setup for many users at once: gpuhub.services.usercli's `add`, as `invoke adduser`
        runs it in the hub, for each name in one process (a task per user costs seconds;
        `invoke adduser` itself is tested in test_users.py). Passwords go on stdin."""
        self._usercli_each("add", passwords)

    def remove_users(self, names: list[str]) -> None:
        """`invoke deluser` for many users in one process (as add_users)."""
        self._usercli_each("delete", dict.fromkeys(names, ""))

    def _usercli_each(self, command: str, passwords: dict[str, str]) -> None:
        script = ("import io, sys\nfrom gpuhub.services import usercli\n"
                  "for line in sys.stdin.read().splitlines():\n"
                  "    name, password = line.split(' ', 1)\n"
                  "    sys.stdin = io.StringIO(password + '\\n')\n"
                  f"    if usercli.main([{command!r}, name]) != 0:\n"
                  "        sys.exit('failed for ' + name)\n")
        lines = "".join(f"{name} {password}\n" for name, password in passwords.items())
        result = self.compose("exec", "-T", "hub", "python3", "-c", script, stdin=lines)
        if result.returncode != 0:
            raise AssertionError(f"usercli {command} for {sorted(passwords)} failed:\n"
                                 f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")

    def users(self) -> list[dict]:
        return json.loads(self.invoke("users", "--json").stdout)

    def lab_container(self, user: str) -> str:
        return f"{self.project}-lab-{user}"

    def service_container(self, service: str) -> str:
        """The ID of the running container of one of the stack's compose services ("" if none)."""
        return self.docker("ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                           "--filter", f"label=com.docker.compose.service={service}").stdout.strip()

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)

    def inspect(self, name: str) -> dict:
        return json.loads(self.docker("inspect", name).stdout)[0]

    def inspect_network(self, name: str) -> dict:
        return json.loads(self.docker("network", "inspect", name).stdout)[0]

    def teardown(self) -> None:
        """Remove everything this project created: labs, hub, volumes, network."""
        labs = self.docker("ps", "-aq", "--filter", f"label=gpuhub.project={self.project}",
                           check=False).stdout.split()
        if labs:
            self.docker("rm", "-f", *labs, check=False)
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5")
        volumes = self.docker("volume", "ls", "-q", "--filter", f"name={self.project}-",
                              check=False).stdout.split()
        if volumes:
            self.docker("volume", "rm", "-f", *volumes, check=False)
        self.docker("network", "rm", f"{self.project}-labs", check=False)
        remove_firewall_rules(self.project)


def remove_firewall_rules(project: str) -> None:
    """The lab firewall's rules outlive its container (`invoke down` removes them)."""
    from gpuhub.core.names import bridge_name
    from gpuhub.labfirewall.service import Firewall, Ruleset, choose_backend

    if os.geteuid() != 0:
        return  # only root made them (the lab firewall's tests need root)
    try:
        Firewall(Ruleset(project, bridge_name(project)), choose_backend()).remove()
    except RuntimeError:  # Docker does not manage iptables here: there are none
        pass


def build_images_once(workdir: Path) -> float:
    """Build the test images through `invoke build` (BuildKit cache makes reruns fast)."""
    builder = Stack.create(workdir / "build")
    started = time.monotonic()
    builder.invoke("build")
    return time.monotonic() - started


def secret_places(stack: Stack) -> dict[str, str]:
    """Where a secret must never show: every service's log, each container's `docker
    inspect` and process list, and the host's process list."""
    places = {"compose logs": stack.logs(tail=100000)}
    for container in stack.compose("ps", "-aq").stdout.split():
        places[f"docker inspect {container}"] = stack.docker("inspect", container).stdout
        places[f"ps in {container}"] = stack.docker("exec", container, "sh", "-c",
                                                     "cat /proc/[0-9]*/cmdline | tr '\\0' ' '",
                                                     check=False).stdout
    places["host ps"] = subprocess.run(["ps", "auxww"], capture_output=True, text=True).stdout
    return places
