"""End-to-end tier: a real stack (through pytest-docker) and a real headless browser.

The stack runs under its own compose project with its own port, volumes and network;
at the end its labs, volumes and network are removed. GPU mode: a host whose own
``nvidia-smi`` (on PATH) works has real GPUs; otherwise GPU tests run against whatever
NVIDIA_SMI reports (CI: the test double) and the real-GPU check is skipped, unless
``--gpu=required`` (a GPU runner) turns that skip into a failure.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from gpuhub.core import gpus as gpu_inventory
from gpuhub.tasks import labsnetwork
from gpuhub.tasks import project as gpuhub_project
from gpuhub.tasks.composestack import GPU_SAMPLER_FILE, detect_gpus
from harness.stack import ROOT, Stack
from support.browser import HubBrowser, chromium

ARTIFACTS = ROOT / "artifacts" / "e2e"
PASSWORDS = {"alice": "alice-e2e-pw-4b1d", "bob": "bob-e2e-pw-9c2e", "admin": "admin-e2e-pw-71fa"}
DOUBLE_DIR = "/usr/local/lib/gpuhub-gpu-double"
STACK_KEY = pytest.StashKey[Stack]()
FAILED_KEY = pytest.StashKey[dict]()
_BROWSERS: list[HubBrowser] = []  # open right now: saved when a test fails


def gpu_option(config) -> str:
    return config.getoption("--gpu")


def pytest_configure(config):
    config.stash[FAILED_KEY] = {}


# --- GPU mode ------------------------------------------------------------------

@dataclass(frozen=True)
class GpuMode:
    option: str  # auto | required | off
    real: bool  # this host's own nvidia-smi works
    inventory: tuple[gpu_inventory.Gpu, ...]  # what the hub was given


def real_nvidia_smi() -> str | None:
    """Path of a working host nvidia-smi on PATH (never the test double's)."""
    smi = shutil.which("nvidia-smi")
    if not smi or Path(smi).resolve().is_relative_to(DOUBLE_DIR):
        return None
    if subprocess.run([smi, "-L"], capture_output=True).returncode != 0:
        return None
    return smi


# --- the stack, through pytest-docker --------------------------------------------

@pytest.fixture(scope="session")
def e2e_stack(images, tmp_path_factory, pytestconfig) -> Stack:
    """This run's settings file and project; whatever is left of it is removed at the end."""
    overrides = {"GPU_DEVICES": "none"} if gpu_option(pytestconfig) == "off" else {}
    stack = Stack.create(tmp_path_factory.mktemp("e2e-stack"), **overrides)
    pytestconfig.stash[STACK_KEY] = stack
    yield stack
    stack.teardown()  # also covers an `up` that failed half-way


@pytest.fixture(scope="session")
def gpu_mode(e2e_stack, pytestconfig) -> GpuMode:
    project = gpuhub_project.load(environ={"GPUHUB_ENV_FILE": str(e2e_stack.env_file)})
    option = gpu_option(pytestconfig)
    return GpuMode(option=option, real=option != "off" and real_nvidia_smi() is not None,
                   inventory=tuple(detect_gpus(project)))


@pytest.fixture(scope="session")
def host_protection(e2e_stack) -> tuple[tuple[str, ...], dict[str, str]]:
    """What `invoke up` adds for this fresh project: labs apart (their network's subnet,
    the hub's and the proxy's addresses) and the labs' memory limit; files and variables."""
    files, env = e2e_stack.host_protection()
    assert labsnetwork.APART_FILE in files, "a fresh e2e project has no labs network yet"
    return files, env


@pytest.fixture(scope="session")
def docker_compose_command(e2e_stack, gpu_mode, host_protection) -> str:
    # pytest-docker runs "<this> -f FILE -p PROJECT SUBCOMMAND" through a shell, so the
    # variables `invoke up` hands compose are given here, without touching os.environ.
    # The proxy token `invoke up` would create (compose mounts it as a secret).
    project = gpuhub_project.load(environ={"GPUHUB_ENV_FILE": str(e2e_stack.env_file)})
    project.ensure_secret("proxy-token")
    project.ensure_secret("metrics-token")
    env = {"GPUHUB_ENV_FILE": str(e2e_stack.env_file),
           "GPUHUB_GPU_INVENTORY": gpu_inventory.to_json(list(gpu_mode.inventory)),
           # The labs bridge lab-firewall guards (the project name is too long to be it).
           "GPUHUB_LABS_BRIDGE": project.labs_bridge, **host_protection[1]}
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()),
                     "docker compose", "--project-directory", shlex.quote(str(ROOT)),
                     "--env-file", shlex.quote(str(e2e_stack.env_file))])


@pytest.fixture(scope="session")
def docker_compose_file(e2e_stack, gpu_mode) -> list[str]:
    files, _ = e2e_stack.compose_files_and_env()  # labs apart's file included
    if gpu_mode.inventory:  # as `invoke up` does: the sampler may read the GPUs
        files = [*files, GPU_SAMPLER_FILE]
    return [str(ROOT / name) for name in files]


@pytest.fixture(scope="session")
def docker_compose_project_name(e2e_stack) -> str:
    return e2e_stack.project


@pytest.fixture(scope="session")
def docker_setup(e2e_stack) -> list[str]:
    timeout = int(e2e_stack.settings["SPAWN_TIMEOUT"])
    return [f"up -d --wait --wait-timeout {timeout}"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down --volumes --remove-orphans --timeout 5"]


@pytest.fixture(scope="session")
def hub(docker_services, e2e_stack) -> Stack:
    """The running stack (compose up by pytest-docker); its labs are removed at the end."""
    def answers() -> bool:
        try:
            return requests.get(f"{e2e_stack.url}/hub/health", timeout=2).ok
        except requests.RequestException:
            return False

    docker_services.wait_until_responsive(check=answers, timeout=120, pause=0.5)
    yield e2e_stack
    # Labs are not compose services: remove them before pytest-docker's `down`, which
    # could not remove the labs network while they are attached to it.
    labs = e2e_stack.docker("ps", "-aq", "--filter", f"label=gpuhub.project={e2e_stack.project}",
                            check=False).stdout.split()
    if labs:
        e2e_stack.docker("rm", "-f", *labs, check=False)


@pytest.fixture(scope="session")
def users(hub) -> dict[str, str]:
    """alice, bob and the admin, created with the real `invoke adduser --password-stdin`."""
    for name, password in PASSWORDS.items():
        flags = ["--admin"] if name == "admin" else []
        hub.invoke("adduser", name, *flags, "--password-stdin", stdin=password + "\n")
    return PASSWORDS


# --- browsers ----------------------------------------------------------------------

def _open(stack: Stack, tmp_path_factory, label: str) -> HubBrowser:
    driver = chromium(tmp_path_factory.mktemp(f"chromium-{label}"))
    browser = HubBrowser(driver, stack.url, label, logs=stack.logs)
    _BROWSERS.append(browser)
    return browser


def _close(browser: HubBrowser) -> None:
    _BROWSERS.remove(browser)
    browser.driver.quit()


def _browsers(hub, tmp_path_factory):
    opened: list[HubBrowser] = []

    def make(label: str) -> HubBrowser:
        opened.append(_open(hub, tmp_path_factory, label))
        return opened[-1]

    yield make
    for b in opened:
        _close(b)


@pytest.fixture
def browser(hub, tmp_path_factory):
    """Open a fresh browser (own profile, no cookies) labelled e.g. by the user in it."""
    yield from _browsers(hub, tmp_path_factory)


@pytest.fixture(scope="module")
def module_browser(hub, tmp_path_factory):
    """Like ``browser``, but kept for a whole module (one user's long-lived session)."""
    yield from _browsers(hub, tmp_path_factory)


# --- artifacts on failure ------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def _fresh_artifacts():
    """This run's artifacts only: a CI upload must not carry an older run's failures."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)


def _save_artifacts(item, stack: Stack | None) -> Path:
    folder = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", item.name)
    for b in list(_BROWSERS):
        b.save(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if stack is not None:
        (folder / "docker-compose.log").write_text(
            stack.compose("logs", "--no-color", "--timestamps").stdout)
        labs = stack.docker("ps", "-aq", "--filter", f"label=gpuhub.project={stack.project}",
                            check=False).stdout.split()
        lab_logs = []
        for lab in labs:
            out = stack.docker("logs", "--timestamps", lab, check=False)
            lab_logs.append(f"===== {lab}\n{out.stdout}{out.stderr}")
        (folder / "labs.log").write_text("\n".join(lab_logs) or "no lab containers\n")
    return folder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and report.when in ("setup", "call"):
        folder = _save_artifacts(item, item.config.stash.get(STACK_KEY, None))
        item.config.stash[FAILED_KEY][item.nodeid] = folder
        report.sections.append(("gpuhub e2e artifacts",
                                "screenshot, page HTML, browser console and docker compose "
                                f"logs saved in {folder}"))
    return report


def pytest_terminal_summary(terminalreporter, config):
    failed = config.stash.get(FAILED_KEY, {})
    if failed:
        terminalreporter.section("gpuhub e2e artifacts of failed tests")
        for nodeid, folder in failed.items():
            terminalreporter.write_line(f"{nodeid}: {folder}")
