"""The deployment as the tasks see it: settings file, validated settings, compose commands,
and the helpers every task shares (one-line failures, Docker checks, the user CLI).

The lower layer of the host's tasks: the modes' modules (``composestack``,
``swarmstack``) build on it, and ``gpuhub.tasks.project.load`` picks the mode, so nothing
here imports a mode. ``StackMode`` is the seam both modes offer (a typed interface that the
type checker holds each mode's module to).
"""

from __future__ import annotations

import json
import re
import shlex
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from invoke.exceptions import Exit

from gpuhub.core import names
from gpuhub.core.files import read_or_create_secret
from gpuhub.core.profiles import ProfileError, Profiles
from gpuhub.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# docker-compose.yml's `depends_on: {required: false}` came in Compose 2.20.
MIN_COMPOSE = (2, 20)


def fail(message: str, code: int = 1) -> Exit:
    """The one-line error a task exits with (invoke prints it on stderr)."""
    return Exit(f"error: {message}", code=code)


@dataclass
class Project:
    root: Path
    env_file: Path
    settings: Settings
    # This mode's stack: gpuhub.tasks.composestack or swarmstack (chosen by project.load).
    stack: StackMode

    @property
    def name(self) -> str:
        return self.settings.compose_project_name

    def compose(self, args: str, extra_files: tuple[str, ...] = ()) -> str:
        """The ``docker compose`` command line for this project (``extra_files``: more
        overrides, which only change services, such as the sampler's GPUs)."""
        parts = ["docker", "compose", "--project-directory", str(self.root)]
        for name in [*self.compose_files, *extra_files]:
            parts += ["-f", str(self.root / name)]
        if self.env_file.exists():
            parts += ["--env-file", str(self.env_file)]
        return shlex.join(parts) + " " + args

    @property
    def compose_files(self) -> list[str]:
        """docker-compose.yml, plus the overrides the settings ask for.

        The base file is the default, protected setup (docker-proxy, lab-firewall, one
        origin per lab); the overrides switch those off, or add HTTPS.
        """
        files = ["docker-compose.yml"]
        if not self.settings.docker_socket_proxy:
            files.append("docker-compose.docker-socket.yml")
        if not self.settings.lab_firewall:
            files.append("docker-compose.no-lab-firewall.yml")
        if self.settings.labs_mem_limit == "none":
            files.append("docker-compose.no-lab-memory.yml")
        if self.settings.work_quota != "none":
            files.append("docker-compose.work-quota.yml")
        if self.settings.users_can_act_as_each_other:
            files.append("docker-compose.shared-origin.yml")
        if self.settings.tls_cert:  # validation guarantees TLS_KEY too
            files.append("docker-compose.tls.yml")
        if self.settings.hub_http_redirect_port:  # only allowed with TLS
            files.append("docker-compose.tls-redirect.yml")
        if self.settings.authenticator != "native":
            files.append("docker-compose.login.yml")
        return files

    @property
    def labs_bridge(self) -> str:
        """The labs network's bridge interface (lab-firewall's rules name it)."""
        return names.bridge_name(self.name)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for compose: the file's path (for env_file), validated settings,
        and the labs bridge's name."""
        env = self.settings.raw_env()
        env["GPUHUB_ENV_FILE"] = str(self.env_file)
        env["GPUHUB_LABS_BRIDGE"] = self.labs_bridge
        env.update(extra)
        return env

    def path(self, value: str) -> Path:
        """A path from the settings as compose reads it: absolute, or relative to the
        repository."""
        path = Path(value)
        return path if path.is_absolute() else self.root / path

    @property
    def secrets_dir(self) -> Path:
        return self.path(self.settings.secrets_dir)

    @property
    def profiles_path(self) -> Path:
        return self.path(self.settings.profiles_file)

    def ensure_secret(self, name: str) -> Path:
        """The secret file ``<project>-<name>`` under SECRETS_DIR, created (0600) if missing."""
        self.secrets_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.secrets_dir / f"{self.name}-{name}"
        read_or_create_secret(path)
        return path

    @property
    def swarm(self) -> bool:
        return self.settings.mode == "swarm"

    @property
    def hub_service(self) -> str:
        """The hub's Swarm service (``docker stack deploy`` prefixes the stack name)."""
        return f"{self.name}_hub"

    def hub_container(self) -> str:
        """Command printing the running hub container's ID (swarm: on this node)."""
        return self.stack.hub_container(self)

    def exec_hub(self, args: str) -> str:
        """Run a command inside the hub container (no TTY, stdin passed through)."""
        return self.stack.exec_hub(self, args)



class WorkFolder(Protocol):
    """A user's work folder as the tasks use it (purge, backup, restore), in either mode."""

    key: str
    mount: str  # what a helper container's `-v <mount>:...` names
    what: str
    by_hand: str

    def exists(self, c) -> bool: ...
    def create_command(self, image: str) -> str: ...
    def remove_command(self, image: str) -> str: ...


class StackMode(Protocol):
    """What differs between the modes, as both ``composestack`` and ``swarmstack`` offer it.

    The tasks reach a mode only through ``project.stack`` (a module that the type checker
    holds to this interface: see ``gpuhub.tasks.project.STACKS``).
    """

    def up(self, c, project: Project, *, build: bool, timeout: float, profiles: Profiles,
           hub_was_running: bool, proxy_was_running: bool) -> str: ...
    def down(self, c, project: Project, labs: bool) -> None: ...
    def restart(self, c, project: Project) -> bool: ...
    def status(self, c, project: Project) -> None: ...
    def logs(self, c, project: Project, follow: bool, tail: int) -> None: ...
    def compose_by_hand(self, c, project: Project, args: list[str]) -> int: ...
    def gpus(self, c, project: Project, json_out: bool, watch: bool) -> None: ...
    def gpu_back(self, c, project: Project, gpu: str) -> None: ...
    def hub_container(self, project: Project) -> str: ...
    def exec_hub(self, project: Project, args: str) -> str: ...
    def proxy_running(self, c, project: Project) -> bool: ...
    def work_folder(self, project: Project, name: str) -> WorkFolder: ...
    def archived_work_folder(self, project: Project, key: str) -> WorkFolder: ...
    def work_folders(self, c, project: Project) -> Sequence[WorkFolder]: ...
    def helper_image(self, c, project: Project) -> str: ...
    def running_labs(self, c, project: Project) -> list[str]: ...


def require_docker(c) -> None:
    """Exit clearly when Docker or Compose v2 is missing."""
    if c.run("docker info --format '{{.ServerVersion}}'", hide=True, warn=True).failed:
        raise fail("Docker is not running or this user may not use it: start it "
                   "(`sudo systemctl start docker`) or add yourself to the docker group")
    compose = c.run("docker compose version --short", hide=True, warn=True)
    if compose.failed:
        raise fail("Docker Compose v2 (`docker compose`) is missing: install the "
                   "docker-compose-plugin package")
    found = compose.stdout.strip().lstrip("v")
    numbers = [int(n) for n in re.findall(r"\d+", found)[:2]]
    if len(numbers) == 2 and tuple(numbers) < MIN_COMPOSE:
        raise fail(f"Docker Compose {found} is too old: gpuhub needs "
                   f"{'.'.join(map(str, MIN_COMPOSE))} or newer (docker-compose.yml uses "
                   "optional dependencies); update the docker-compose-plugin package")


def helper_container(image: str, source: str, mount: str, args: str, stdin: bool = False) -> str:
    """A throw-away container of ``image``, no network, with ``source`` (a volume or a host
    folder) at ``mount``: Docker work on files the host's user may not read."""
    flags = "--rm -i" if stdin else "--rm"
    return (f"docker run {flags} --network none -v {shlex.quote(source + ':' + mount)} "
            f"{shlex.quote(image)} {args}")


def hub_running(c, project: Project) -> bool:
    result = c.run(project.hub_container(), env=project.env(), hide=True, warn=True)
    return bool(result.ok and result.stdout.strip())


def require_running(c, project: Project) -> None:
    """Exit clearly unless the project's hub runs. A running hub answers for Docker and
    Compose too (`invoke up` checked them before it started it), so they are checked only
    when it does not run, for the message that says what to fix: two commands (0.3 s)
    less for every user task."""
    if hub_running(c, project):
        return
    require_docker(c)
    raise fail(f"the hub of project {project.name!r} is not running; start it with `invoke up`")


def port_free(address: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


# --- helpers every task module may use ------------------------------------------------

USERCLI = "python3 -m gpuhub.services.usercli"


def step(message: str) -> None:
    """One line of a long task's progress."""
    print(f"==> {message}", flush=True)


def load_profiles(project) -> Profiles:
    """Validate PROFILES_FILE on the host, before Docker is touched."""
    try:
        return Profiles.from_file(project.profiles_path)
    except ProfileError as err:
        raise fail(str(err)) from None


def docker_inspect(c, ids: list[str]) -> list[dict]:
    """`docker inspect` of ``ids`` as JSON: what this engine knows of them, labels as Docker
    holds them ([] for none). An ID the engine does not know fails the command, but the
    others are still printed; output that is not JSON is the task's one-line error."""
    if not ids:
        return []
    found = c.run("docker inspect " + " ".join(shlex.quote(i) for i in ids), hide=True, warn=True)
    try:
        return json.loads(found.stdout) if found.stdout.strip() else []
    except ValueError:
        raise fail(f"docker inspect printed no JSON: {found.stderr.strip()}") from None


# docker's last line after a refused `docker run` ("See 'docker run --help'."): the line
# before it says why.
DOCKER_HELP_HINT = re.compile(r"See 'docker [a-z ]+ --help'\.")


def stderr_tail(result, default: str | None = None) -> str:
    """The last line a failed command wrote on stderr (else ``default``, else its exit
    code), without an "error: " of its own, at most 300 characters: for one-line errors."""
    lines = [ln for ln in (result.stderr or "").splitlines()
             if ln.strip() and not DOCKER_HELP_HINT.fullmatch(ln.strip())]
    last = lines[-1].strip() if lines else (default or f"exit code {result.return_code}")
    return last.removeprefix("error: ")[-300:]


def run_usercli(c, project, args: str, stdin: str | None = None, hide: bool = True,
                also_ok: tuple[int, ...] = (), what: str = ""):
    """Run ``gpuhub.services.usercli`` in the hub; turn its refusal into the task's one-line
    error (after ``what: ``), unless it exits with a code in ``also_ok``."""
    import io

    kwargs = {"in_stream": io.StringIO(stdin + "\n")} if stdin is not None else {"in_stream": False}
    result = c.run(project.exec_hub(f"{USERCLI} {args}"), env=project.env(),
                   hide=hide, warn=True, **kwargs)
    if result.failed and result.return_code not in also_ok:
        raise fail((f"{what}: " if what else "") + stderr_tail(result))
    return result
