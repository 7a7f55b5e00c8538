"""Tasks that build, start, stop and inspect the stack."""

from __future__ import annotations

import datetime
import json as jsonlib
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import time

from invoke import task

from .. import gpus as gpu_inventory
from .. import lablimits, names
from .. import status as status_tables
from ..profiles import Profiles
from ..swarm import image_ref, report_text
from . import swarmstack
from .login import check_files as check_login_files
from .login import files_stamp as login_files_stamp
from .project import (
    USERCLI,
    fail,
    hub_running,
    load,
    load_profiles,
    port_free,
    require_docker,
    require_running,
    run_usercli,
    step,
)
from .tls import check_files as check_tls_files
from .tls import files_digest as tls_files_digest

# Added to `docker compose up` when the inventory has GPUs (the sampler may read them).
GPU_SAMPLER_FILE = "docker-compose.gpu-sampler.yml"


def build_commands(project, hub: bool = True, lab: bool = True, no_cache: bool = False) -> list[str]:
    """The ``docker build`` commands for the images (BuildKit, CA bundle as a secret).

    ``hub`` also builds the hub's helpers the settings turn on: docker-proxy and
    lab-firewall (Debian packages over plain HTTP: no CA bundle needed; compose mode
    only, see settings).
    """
    s = project.settings
    cache = ["--no-cache"] if no_cache else []
    common = ["docker", "build", "--build-arg", f"JUPYTERHUB_VERSION={s.jupyterhub_version}"]
    if s.extra_ca_certs:
        common += ["--secret", f"id=extra_ca_certs,src={s.extra_ca_certs}"]
    common += cache
    root = project.root
    debian = ["docker", "build", *cache, "--build-arg", f"BASE_IMAGE={s.debian_base_image}"]
    cmds = []
    if hub:
        cmds.append(common + ["--build-arg", f"BASE_IMAGE={s.hub_base_image}",
                              "-f", str(root / "jupyterhub" / "Dockerfile"),
                              *_tags(s, s.hub_image), str(root)])
        if s.docker_socket_proxy:
            cmds.append(debian + ["-f", str(root / "jupyterhub" / "docker-proxy" / "Dockerfile"),
                                  "-t", s.docker_proxy_image, str(root)])
        if s.lab_firewall:
            cmds.append(debian + ["-f", str(root / "jupyterhub" / "lab-firewall" / "Dockerfile"),
                                  "-t", s.lab_firewall_image, str(root)])
    if lab:
        cmds.append(common + ["--build-arg", f"BASE_IMAGE={s.lab_base_image}",
                              "-f", str(root / "jupyterlab" / "Dockerfile"),
                              *_tags(s, s.lab_image), str(root)])
    return [shlex.join(cmd) for cmd in cmds]


def _tags(settings, image: str) -> list[str]:
    """The local tag, and the REGISTRY one when a registry is set."""
    tags = ["-t", image]
    if settings.registry:
        tags += ["-t", image_ref(settings, image)]
    return tags


def push_commands(project, hub: bool = True, lab: bool = True) -> list[str]:
    """``docker push`` of the images to REGISTRY."""
    s = project.settings
    images = [s.hub_image] * hub + [s.lab_image] * lab
    return [shlex.join(["docker", "push", image_ref(s, image)]) for image in images]


def detect_gpus(project) -> list[gpu_inventory.Gpu]:
    """Discover host GPUs and apply GPU_DEVICES; warn once and go CPU-only when none."""
    setting = project.settings.gpu_devices
    if setting == "none":
        return []
    detected: list[gpu_inventory.Gpu] = []
    smi = shutil.which(project.settings.nvidia_smi)
    if smi:
        out = subprocess.run([smi, *gpu_inventory.QUERY[1:]], capture_output=True, text=True)
        if out.returncode == 0:
            detected = gpu_inventory.parse_nvidia_smi(out.stdout)
        else:
            print(f"warning: nvidia-smi failed ({out.stderr.strip()[:200]})", file=sys.stderr)
    try:
        chosen = gpu_inventory.select(detected, setting)
    except ValueError as err:
        raise fail(str(err)) from None
    if not chosen:
        print("warning: no NVIDIA GPU found on this host; labs run CPU-only "
              "(set GPU_DEVICES in .env if this is wrong)", file=sys.stderr)
    return chosen


def build_images(c, project, hub: bool = True, lab: bool = True, no_cache: bool = False) -> None:
    for cmd in build_commands(project, hub=hub, lab=lab, no_cache=no_cache):
        step(cmd)
        if c.run(cmd, env={"DOCKER_BUILDKIT": "1"}, warn=True, pty=False).failed:
            raise fail("image build failed (see the output above); if it could not reach "
                       "PyPI behind a proxy, set EXTRA_CA_CERTS in .env")


def push_images(c, project, hub: bool = True, lab: bool = True) -> None:
    if not project.settings.registry:
        raise fail("--push needs REGISTRY in .env (the registry every Swarm node pulls from)")
    for cmd in push_commands(project, hub=hub, lab=lab):
        step(cmd)
        if c.run(cmd, warn=True, hide="out").failed:
            raise fail(f"push to {project.settings.registry} failed (see above); check that "
                       "the registry is reachable and that you are logged in (`docker login`)")


@task(help={"hub": "Build the hub image and its helpers, docker-proxy and lab-firewall, as "
                   "the settings use them (default: yes; --no-hub skips them).",
            "lab": "Build the lab image (default: yes; --no-lab skips it).",
            "no-cache": "Rebuild every layer instead of using the build cache.",
            "push": "Then push both to REGISTRY (swarm mode: every node pulls from there)."})
def build(c, hub=True, lab=True, no_cache=False, push=False):
    """Build the hub, its helpers and the lab image (BuildKit; EXTRA_CA_CERTS is trusted)."""
    project = load()
    require_docker(c)
    build_images(c, project, hub=hub, lab=lab, no_cache=no_cache)
    if push:
        push_images(c, project, hub=hub, lab=lab)


@task(help={"build": "Build the images first (default: yes; --no-build uses what is there).",
            "timeout": "Seconds to wait for the hub to become healthy."})
def up(c, build=True, timeout=180):
    """Build the images, start the hub, and create missing admins (passwords printed once)."""
    project = load()
    s = project.settings
    if s.shared_data_dir and not os.path.isdir(s.shared_data_dir):
        raise fail(f"SHARED_DATA_DIR={s.shared_data_dir!r} is not a folder on this host; "
                   "create it or empty the setting")
    profiles = load_profiles(project)
    check_tls_files(project)
    check_login_files(project)
    require_docker(c)
    # The project's own proxy holds the ports while the hub is stopped or exited: up
    # then brings the rest back, it is not a port taken by someone else.
    hub_was_running, proxy_was_running = hub_running(c, project), proxy_running(c, project)
    running = hub_was_running or proxy_was_running
    if not running and not port_free(s.hub_bind_address, s.hub_port):
        raise fail(f"port {s.hub_port} on {s.hub_bind_address} is already in use; "
                   "set HUB_PORT in .env to a free port")
    if (not running and s.hub_http_redirect_port
            and not port_free(s.hub_bind_address, s.hub_http_redirect_port)):
        raise fail(f"port {s.hub_http_redirect_port} on {s.hub_bind_address} is already in "
                   "use; set HUB_HTTP_REDIRECT_PORT in .env to a free port, or empty it")
    if project.swarm:
        if build:
            build_images(c, project)
            push_images(c, project)
        inventory = swarmstack.deploy(c, project, timeout)
        create_missing_admins(c, project)
        print(f"gpuhub is up on the Swarm: http://<this node>:{s.hub_port}/  "
              f"({gpu_inventory.summary(inventory)})")
        return
    inventory = detect_gpus(project)
    if s.lab_firewall:
        check_labs_bridge(c, project)
    if build:
        build_images(c, project)
    pull_profile_images(c, project, profiles)
    remove_switched_off(c, project)
    project.ensure_secret("proxy-token")
    project.ensure_secret("metrics-token")
    memory = docker_host_memory(c)
    if s.lab_mem_limit == "auto" and memory:
        step(lablimits.auto_memory_note(memory))
    env = project.env(GPUHUB_GPU_INVENTORY=gpu_inventory.to_json(inventory),
                      GPUHUB_TLS_DIGEST=tls_files_digest(project),
                      GPUHUB_LOGIN_FILES=login_files_stamp(project),
                      **{lablimits.HOST_MEMORY_ENV: str(memory or "")})
    step(f"starting project {project.name}")
    # The sampler gets the GPUs only when there are some (else Docker refuses it).
    sampler_gpus = (GPU_SAMPLER_FILE,) if inventory else ()
    result = c.run(project.compose(f"up -d --wait --wait-timeout {int(timeout)}",
                                   extra_files=sampler_gpus), env=env, warn=True)
    if result.failed:
        c.run(project.compose("logs --tail 40 hub"), env=env, warn=True)
        raise fail("the hub did not become healthy (its last log lines are above); "
                   "fix the cause and run `invoke up` again")
    if hub_was_running and not proxy_was_running:
        # The proxy keeps the labs' routes in memory only; a hub adds them all back when
        # it starts (else only at its next check, within 5 minutes).
        step("restarting the hub, which gives the new proxy the labs' routes")
        c.run(project.compose("restart hub"), env=env)
        wait_healthy(c, project, timeout)
    create_missing_admins(c, project)
    host = "localhost" if s.hub_bind_address in ("0.0.0.0", "::") else s.hub_bind_address
    scheme = "https" if s.tls_cert else "http"
    redirect = (f"; http://{host}:{s.hub_http_redirect_port}/ redirects there"
                if s.hub_http_redirect_port else "")
    print(f"gpuhub is up: {scheme}://{host}:{s.hub_port}/  ({gpu_inventory.summary(inventory)}"
          f"{redirect})")


def docker_host_memory(c) -> int:
    """Bytes of memory of the machine the Docker engine (and so every lab) runs on; 0 if
    Docker does not say. Docker's figure, not this shell's: the engine may be remote, or
    in a VM (Docker Desktop) or an LXC container whose size LXCFS reports."""
    found = c.run("docker info --format '{{.MemTotal}}'", hide=True, warn=True)
    text = found.stdout.strip() if found.ok else ""
    return int(text) if text.isdigit() else 0


def proxy_running(c, project) -> bool:
    """Whether the project's proxy container runs (it holds HUB_PORT)."""
    found = c.run(project.compose("ps --status running --quiet proxy"), env=project.env(),
                  hide=True, warn=True)
    return bool(found.ok and found.stdout.strip())


def check_labs_bridge(c, project) -> None:
    """Refuse a labs network whose bridge is not the one lab-firewall's rules name.

    Networks made before gpuhub named the bridge (or by hand, see docker-compose.yml)
    keep Docker's ``br-<id>``; Docker cannot rename it, so the network must be made anew.
    """
    network = names.labs_network(project.name)
    found = c.run("docker network inspect --format "
                  "'{{index .Options \"com.docker.network.bridge.name\"}} {{.EnableIPv6}}' "
                  + network, hide=True, warn=True)
    if found.failed:
        return  # not made yet: compose makes it with the right name
    bridge, _, ipv6 = found.stdout.strip().rpartition(" ")
    if ipv6 == "true":
        raise fail(f"the labs network {network} has IPv6 on, which the lab firewall does not "
                   "cover; it was made by hand: run `invoke down`, then `invoke up`")
    if bridge != project.labs_bridge:
        current = "Docker's br-<id>" if bridge in ("", "<no value>") else repr(bridge)
        raise fail(f"the labs network {network} has the bridge {current}, but lab-firewall "
                   f"guards {project.labs_bridge!r}: it was made by an older gpuhub or by "
                   "hand; run `invoke down`, then `invoke up` (users, passwords and work "
                   "folders are kept)")


def remove_switched_off(c, project) -> None:
    """Stop the helpers the settings have switched off since the last `invoke up`.

    Compose leaves a service's container running when an override file disables it.
    """
    s = project.settings
    off = [name for name, on in (("docker-proxy", s.docker_socket_proxy),
                                 ("lab-firewall", s.lab_firewall)) if not on]
    for service in off:
        ids = c.run(f"docker ps -aq --filter label=com.docker.compose.project={project.name} "
                    f"--filter label=com.docker.compose.service={service}",
                    hide=True, warn=True).stdout.split()
        if ids:
            step(f"removing {service} (switched off in the settings)")
            c.run("docker stop -t 30 " + " ".join(ids), hide=True, warn=True)
            c.run("docker rm -f " + " ".join(ids), hide=True, warn=True)
            if service == "lab-firewall":  # its rules outlive it
                remove_lab_firewall_rules(c, project)


def pull_profile_images(c, project, profiles: Profiles) -> None:
    """Pull every other image a profile names now, so no first spawn waits on a pull."""
    lab_image = project.settings.lab_image
    for image in profiles.images(lab_image):
        if image == lab_image:
            continue
        if c.run(f"docker image inspect {shlex.quote(image)}", hide=True, warn=True).ok:
            continue
        step(f"pulling {image} (named in profiles)")
        if c.run(f"docker pull {shlex.quote(image)}", warn=True).failed:
            raise fail(f"could not pull {image!r}, which a profile names; fix the image in "
                       f"{project.settings.profiles_file} or make it available")


def create_missing_admins(c, project) -> None:
    """Create each ADMIN_USERS account that does not exist yet; print its password once.
    (With a directory, ADMIN_USERS are made admins at their first login instead.)"""
    if project.settings.authenticator != "native":
        return
    for name in project.settings.admin_users:
        exists = c.run(project.exec_hub(f"{USERCLI} exists {shlex.quote(name)}"),
                       env=project.env(), hide=True, warn=True)
        if exists.return_code == 0:
            continue
        if exists.return_code != 3:
            # The last line of a traceback says what went wrong; the error must be one line.
            last = (exists.stderr.strip().splitlines() or [f"exit code {exists.return_code}"])[-1]
            raise fail(f"could not check admin {name!r}: {last[-300:]}")
        password = secrets.token_urlsafe(12)
        run_usercli(c, project, f"add {shlex.quote(name)} --admin", stdin=password)
        print(f"created admin {name!r} with password: {password}\n"
              "  (shown only this once and stored only as a hash; "
              f"change it with `invoke passwd {name}`)")


@task(help={"labs": "Also stop the users' lab containers (default: yes)."})
def down(c, labs=True):
    """Stop the hub (and the labs); users, passwords and work folders are kept."""
    project = load()
    require_docker(c)
    if project.swarm:
        swarmstack.remove(c, project, labs)
        return
    if labs:
        ids = c.run(f"docker ps -q --filter label=gpuhub.project={project.name}",
                    hide=True, warn=True).stdout.split()
        if ids:
            step(f"stopping {len(ids)} lab(s)")
            c.run("docker stop " + " ".join(ids), hide=True, warn=True)
    c.run(project.compose("down"), env=project.env())
    if project.settings.lab_firewall:
        remove_lab_firewall_rules(c, project)


def remove_lab_firewall_rules(c, project) -> None:
    """Remove the lab firewall's rules, which outlive its container, once no lab runs.

    lab-firewall leaves them in place when it stops or dies (labs still running stay
    cut off); this is the deliberate end of them.
    """
    running = c.run(f"docker ps -q --filter label=gpuhub.project={project.name}",
                    hide=True, warn=True).stdout.split()
    if running:
        print(f"lab firewall rules kept: {len(running)} lab(s) of {project.name} still run")
        return
    s = project.settings
    removed = c.run(shlex.join([
        "docker", "run", "--rm", "--network", "host", "--cap-drop", "ALL",
        "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--security-opt", "no-new-privileges",
        "-e", f"COMPOSE_PROJECT_NAME={project.name}", "-e", f"GPUHUB_LABS_BRIDGE={project.labs_bridge}",
        s.lab_firewall_image, "python3", "/usr/local/lib/gpuhub/labfirewall.py", "remove"]),
        hide=True, warn=True)
    if removed.failed:
        raise fail(f"the lab firewall's rules for {project.name} could not be removed "
                   f"({removed.stderr.strip() or removed.stdout.strip()}); run `invoke down` again")


@task
def restart(c):
    """Restart the hub container; running labs keep running and are reattached."""
    project = load()
    if project.swarm:
        require_running(c, project)
        swarmstack.restart(c, project)
        print("hub restarted")
        return
    require_docker(c)
    if not hub_running(c, project):  # stopped or exited: start what is not running
        print("the hub is not running: starting the stack as `invoke up --no-build` does")
        up(c, build=False)
        return
    c.run(project.compose("restart hub"), env=project.env())
    wait_healthy(c, project)
    print("hub restarted")


def wait_healthy(c, project, timeout: float = 180) -> None:
    """Wait until Docker reports the hub container healthy; show its logs if it never is."""
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        cid = c.run(project.compose("ps -q hub"), env=project.env(), hide=True, warn=True).stdout.strip()
        if cid:
            state = c.run(f"docker inspect -f '{{{{.State.Health.Status}}}}' {cid}",
                          hide=True, warn=True).stdout.strip() or "unknown"
            if state == "healthy":
                return
        time.sleep(1)
    c.run(project.compose("logs --tail 40 hub"), env=project.env(), warn=True)
    raise fail(f"the hub is not healthy after {timeout:.0f}s (last state: {state}); "
               "its last log lines are above")


@task
def status(c):
    """Show the hub container, its health, and the running labs."""
    project = load()
    require_docker(c)
    if project.swarm:
        swarmstack.status(c, project)
        return
    services = c.run(f"docker ps -aq --filter label={names.COMPOSE_PROJECT_LABEL}={project.name}",
                     hide=True, warn=True).stdout.split()
    labs = c.run(f"docker ps -q --filter label=gpuhub.project={project.name}",
                 hide=True, warn=True).stdout.split()
    inspected = _inspect(c, services + labs)
    now = datetime.datetime.now(datetime.UTC)
    print(status_tables.services_table([i for i in inspected if i["Id"][:12] in
                                        {x[:12] for x in services}], now))
    print()
    print(status_tables.labs_table([i for i in inspected if i["Id"][:12] in
                                    {x[:12] for x in labs}], now))


def _inspect(c, ids: list[str]) -> list[dict]:
    """`docker inspect` of ``ids`` as JSON (labels as Docker holds them); [] for none."""
    if not ids:
        return []
    found = c.run("docker inspect " + " ".join(shlex.quote(i) for i in ids), hide=True, warn=True)
    try:
        return jsonlib.loads(found.stdout) if found.stdout.strip() else []
    except ValueError:
        raise fail(f"docker inspect printed no JSON: {found.stderr.strip()}") from None


@task(help={"follow": "Keep printing new log lines until Ctrl-C.",
            "tail": "How many recent lines to show."})
def logs(c, follow=False, tail=200):
    """Show the hub's logs."""
    project = load()
    require_docker(c)
    if project.swarm:
        swarmstack.logs(c, project, follow, tail)
        return
    flags = f"--tail {int(tail)}" + (" --follow" if follow else "")
    c.run(project.compose(f"logs {flags} hub"), env=project.env(), pty=False)


@task(help={"json": "Print JSON instead of a table.",
            "watch": "Redraw the table every GPU_SAMPLE_INTERVAL seconds, until Ctrl-C."})
def gpus(c, json=False, watch=False):
    """Show each GPU: who holds it and since when, utilisation, memory and idle time."""
    import json as jsonlib
    import time

    project = load()
    require_running(c, project)
    if project.swarm:
        rows = swarmstack.gpus_report(c, project)
        print(jsonlib.dumps(rows, indent=2) if json else report_text(rows))
        return
    interval = project.settings.gpu_sample_interval
    try:
        while True:
            board = read_board(c, project)
            text = jsonlib.dumps(board["rows"], indent=2) if json else board_text(board)
            if not watch:
                print(text)
                return
            # Clear the terminal, then the table: a live view without scrolling.
            print(f"\033[H\033[2J{text}\n\n(every {interval} s; Ctrl-C stops)", flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        print()


def read_board(c, project) -> dict:
    """The hub's GPU table (gpuhub.telemetry, run in the hub container) as JSON."""
    import json as jsonlib

    found = c.run(project.exec_hub("python3 -m gpuhub.telemetry"), env=project.env(),
                  hide=True, warn=True)
    if found.failed:
        raise fail(f"could not read the GPUs from the hub: {_stderr_tail(found)}")
    try:
        board = jsonlib.loads(found.stdout)
        board["rows"]
    except (ValueError, KeyError, TypeError):
        raise fail(f"the hub printed no GPU table: {found.stdout.strip()[:200]!r}") from None
    return board


def board_text(board: dict) -> str:
    import time

    from ..gpureport import as_text, duration

    text = as_text(board["rows"])
    if board["rows"] and board.get("problem"):
        text += f"\nNo utilisation: {board['problem']}."
    waiting = board.get("waiting") or []
    if waiting:
        text += "\n\nWaiting for a GPU, in order: " + ", ".join(
            f"{w['user']} ({w.get('gpus', '?')} GPU{'s' if w.get('gpus') != 1 else ''}, "
            f"{duration(int(time.time() - w['since'])) if w.get('since') else '?'})"
            for w in waiting)
    return text


def _nonblank_lines(text: str | None) -> list[str]:
    return [line for line in (text or "").splitlines() if line.strip()]


def _stderr_tail(result) -> str:
    """The last line a failed command wrote on stderr (or its exit code)."""
    return (_nonblank_lines(result.stderr) or [f"exit code {result.return_code}"])[-1][-300:]
