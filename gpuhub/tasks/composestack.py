"""Compose mode (MODE=compose, the default) of the stack tasks: one Docker host.

The same functions as gpuhub.tasks.swarmstack (up, down, restart, status, logs, gpus);
`Project.stack` picks one, so the tasks never ask which mode they are in.
"""

from __future__ import annotations

import contextlib
import datetime
import json as jsonlib
import os
import shlex
import shutil
import subprocess
import sys
import time

from gpuhub.core import gpus as gpu_inventory
from gpuhub.core import lablimits, names, origins
from gpuhub.core.profiles import Profiles
from gpuhub.tasks import hubdatabase, labsnetwork
from gpuhub.tasks import statustables as status_tables
from gpuhub.tasks.deployment import (
    docker_inspect,
    fail,
    hub_running,
    require_docker,
    stderr_tail,
    step,
)
from gpuhub.tasks.images import build_images
from gpuhub.tasks.login import files_stamp as login_files_stamp
from gpuhub.tasks.tlsfiles import files_digest as tls_files_digest

# Added to `docker compose up` when the inventory has GPUs (the sampler may read them).
GPU_SAMPLER_FILE = "docker-compose.gpu-sampler.yml"


def up(c, project, *, build: bool, timeout: float, profiles: Profiles,
       hub_was_running: bool, proxy_was_running: bool) -> str:
    """Build, then start (or update) the compose project; what to tell the admin."""
    s = project.settings
    inventory = detect_gpus(project)
    if s.lab_firewall:
        check_labs_bridge(c, project)
    if build:
        build_images(c, project)
    pull_profile_images(c, project, profiles)
    remove_switched_off(c, project)
    project.ensure_secret(names.PROXY_TOKEN_FILE)
    project.ensure_secret(names.METRICS_TOKEN_FILE)
    memory = docker_host_memory(c)
    if s.lab_mem_limit == "auto" and memory:
        step(lablimits.auto_memory_note(memory))
    extra, env = compose_setup(c, project, inventory, memory)
    # A new JupyterHub meets the old one's database here, before the hub is recreated.
    upgraded = hubdatabase.bring_to_image(c, project, hub_switch(c, project, env))
    if upgraded:
        step(upgraded.message)
    step(f"starting project {project.name}")
    result = c.run(project.compose(f"up -d --wait --wait-timeout {int(timeout)}",
                                   extra_files=extra), env=env, warn=True)
    if result.failed:
        c.run(project.compose("logs --tail 40 hub"), env=env, warn=True)
        raise fail("the hub did not become healthy (its last log lines are above); "
                   "fix the cause and run `invoke up` again"
                   + (f" (the database before its upgrade: {upgraded.backup})"
                      if upgraded else ""))
    if hub_was_running and not proxy_was_running:
        # The proxy keeps the labs' routes in memory only; a hub adds them all back when
        # it starts (else only at its next check, within 5 minutes).
        step("restarting the hub, which gives the new proxy the labs' routes")
        c.run(project.compose("restart hub"), env=env)
        wait_healthy(c, project, timeout)
    return up_message(s, inventory)


def compose_setup(c, project, inventory: list[gpu_inventory.Gpu],
                  memory: int) -> tuple[tuple[str, ...], dict[str, str]]:
    """The compose files (beyond ``project.compose_files``) and the variables `invoke up`
    runs compose with: the GPU inventory, what keeps labs apart and under one memory
    limit, the host's memory, and stamps of the TLS and login files."""
    protection_files, protection_env = host_protection(c, project, memory)
    env = project.env(GPUHUB_GPU_INVENTORY=gpu_inventory.to_json(inventory),
                      GPUHUB_TLS_DIGEST=tls_files_digest(project),
                      GPUHUB_LOGIN_FILES=login_files_stamp(project),
                      **{lablimits.HOST_MEMORY_ENV: str(memory or "")},
                      **protection_env)
    # The sampler gets the GPUs only when there are some (else Docker refuses it).
    return ((GPU_SAMPLER_FILE,) if inventory else ()) + protection_files, env


def compose_by_hand(c, project, args: list[str]) -> int:
    """``docker compose ARGS`` with the files and variables `invoke up` would give it (the
    GPUs found now), on this terminal; its exit status."""
    # What up would say of the host goes to stderr: compose's output stays compose's alone.
    with contextlib.redirect_stdout(sys.stderr):
        extra, env = compose_setup(c, project, detect_gpus(project), docker_host_memory(c))
    command = shlex.split(project.compose(shlex.join(args), extra_files=extra))
    return subprocess.run(command, env={**os.environ, **env}, check=False).returncode


def hub_switch(c, project, env: dict) -> hubdatabase.HubSwitch:
    """The hub database step's compose part: the hub image as built here, `compose stop`,
    and the old container started again (healthy before the admin reads that it runs)."""
    image = project.settings.hub_image

    def runs_image() -> bool:
        container = c.run(project.compose("ps -aq hub"), env=env, hide=True, warn=True).stdout.split()
        built = c.run(f"docker image inspect -f '{{{{.Id}}}}' {shlex.quote(image)}",
                      hide=True, warn=True).stdout.strip()
        return bool(container and built) and c.run(
            f"docker inspect -f '{{{{.Image}}}}' {shlex.quote(container[0])}",
            hide=True, warn=True).stdout.strip() == built

    return hubdatabase.HubSwitch(
        image=image,
        running=lambda: hub_running(c, project),
        stop=lambda: c.run(project.compose("stop hub"), env=env, hide=True),
        start_old=lambda: c.run(project.compose(
            "up -d --no-deps --no-recreate --wait --wait-timeout 180 hub"),
            env=env, hide=True, warn=True),
        runs_image=runs_image)


CGROUP_INFO = "docker info --format '{{.CgroupDriver}} {{.CgroupVersion}}'"


def host_protection(c, project, host_memory: int) -> tuple[tuple[str, ...], dict[str, str]]:
    """The compose files and variables that keep labs apart and under one memory limit,
    as `invoke up` adds them (compose by hand needs the same: docs/howto/compose-by-hand.md)."""
    files: tuple[str, ...] = ()
    env: dict[str, str] = {}
    if project.settings.lab_firewall:
        apart = labsnetwork.plan(c, project)
        if apart is None:
            step(labsnetwork.NOT_APART_WARNING.format(network=names.labs_network(project.name)))
        else:
            files, env = (labsnetwork.APART_FILE,), apart.env()
    check_work_root(c, project)
    return files, {**env, **lab_memory_env(c, project, host_memory),
                   **services_oom_env(c, project), **lab_disk_env(c, project)}


def lab_disk_env(c, project) -> dict[str, str]:
    """LAB_DISK_LIMIT: each lab's writable layer bounded where Docker's storage can (it
    refuses ``--storage-opt size`` elsewhere: overlay2 not on XFS with pquota, vfs, ...).
    Probed by running ``true`` in the lab image with the limit: btrfs storage counts the
    image's own files in it too, so a limit below the image's size fails here, not at
    every lab's start."""
    setting = project.settings.lab_disk_limit
    if setting == "none":
        return {}
    size = lablimits.AUTO_DISK_LIMIT if setting == "auto" else setting
    limit = lablimits.memory_bytes(size)
    made = c.run(shlex.join(["docker", "run", "--rm", "--network", "none", "--storage-opt",
                             f"size={limit}", "--entrypoint", "true",
                             project.settings.lab_image]), hide=True, warn=True)
    if made.ok:
        step(f"each lab may write up to {size} outside ~/work and /tmp "
             f"(LAB_DISK_LIMIT={setting})")
        return {lablimits.DISK_LIMIT_ENV: str(limit)}
    # Docker's reason, without the "See 'docker run --help'." it ends with.
    why = ([line for line in made.stderr.strip().splitlines() if not line.startswith("See '")]
           or ["no reason given"])[-1].removeprefix("docker: ")
    if setting == "auto":
        step("note: Docker's storage cannot bound a lab's writable layer here, so what a user "
             "writes outside ~/work and /tmp has no limit (LAB_DISK_LIMIT=auto; "
             f"docs/howto/work-quotas.md): {why}")
        return {}
    raise fail(f"LAB_DISK_LIMIT={setting} cannot be kept: Docker's storage cannot bound a "
               f"lab's writable layer here, or not to that size ({why}); set LAB_DISK_LIMIT="
               "auto (a limit where Docker can) or none, or a size above the lab image's, or "
               "give Docker overlay2 on XFS with pquota, or btrfs")


def services_oom_env(c, project) -> dict[str, str]:
    """The hub's services as the OOM killer's last choice (a negative oom_score_adj), where
    the engine may set one: it needs CAP_SYS_RESOURCE, which Docker in some sandboxes and
    rootless setups lacks. Probed with the hub's image; {} (the default score) where not."""
    score = names.SERVICES_OOM_SCORE
    probe = c.run(shlex.join(["docker", "run", "--rm", "--network", "none", "--oom-score-adj",
                              str(score), "--entrypoint", "cat", project.settings.hub_image,
                              "/proc/self/oom_score_adj"]), hide=True, warn=True)
    if probe.ok and probe.stdout.strip() == str(score):
        step(f"the hub's services are the OOM killer's last choice (oom_score_adj {score})")
        return {names.SERVICES_OOM_SCORE_ENV: str(score)}
    bounded = ("labs stay under LABS_MEM_LIMIT" if project.settings.labs_mem_limit != "none"
               else "with LABS_MEM_LIMIT=none, labs together may use all the memory, and "
                    "the OOM killer then picks any process, the hub's too")
    step("note: this Docker engine cannot lower OOM scores (no CAP_SYS_RESOURCE), so the "
         f"hub's services keep the default one; {bounded}")
    return {}


def check_work_root(c, project) -> None:
    """WORK_QUOTA: WORK_ROOT is a folder on btrfs with quotas on, as the broker will see it
    (its image, its one capability); else one line that names the fix."""
    s = project.settings
    if s.work_quota == "none":
        return
    root = s.work_root or ""
    setup = (f"make it a btrfs filesystem with quotas on, e.g. `mkfs.btrfs /dev/<disk> && "
             f"mount /dev/<disk> {root} && btrfs quota enable {root}` (docs/howto/"
             "work-quotas.md), or set WORK_QUOTA=none")
    if not os.path.isdir(root):
        raise fail(f"WORK_QUOTA={s.work_quota} needs WORK_ROOT={root}, which is not a folder "
                   f"on this host: {setup}")
    probe = c.run(shlex.join(["docker", "run", "--rm", "--network", "none", "--cap-drop", "ALL",
                              "--cap-add", "SYS_ADMIN", "--security-opt", "no-new-privileges",
                              "-v", f"{root}:{root}", "--entrypoint", "sh",
                              s.docker_proxy_image, "-c", WORK_ROOT_PROBE, "-", root]),
                  hide=True, warn=True)
    kind, _, said = probe.stdout.strip().partition("\n")
    if probe.failed or kind != "btrfs":
        why = (f"it is on {kind or 'an unknown filesystem'}, not btrfs" if kind != "btrfs" else
               f"btrfs quotas are not on there ({(probe.stderr or said).strip().splitlines()[-1:]})")
        raise fail(f"WORK_QUOTA={s.work_quota} cannot be kept in WORK_ROOT={root}: {why}; {setup}")
    step(f"work folders: at most {s.work_quota} each, in {root} (WORK_QUOTA, btrfs quotas)")


# The broker's own check (gpuhub/broker/workfolders.py): the filesystem's type, then the
# quota groups, which `btrfs` lists only where quotas are on.
WORK_ROOT_PROBE = 'stat -f -c %T "$1" && btrfs qgroup show --raw -re "$1" >/dev/null'


def lab_memory_env(c, project, host_memory: int) -> dict[str, str]:
    """What lab-memory, the hub and the broker are told for LABS_MEM_LIMIT: the labs' parent
    cgroup (named for Docker's cgroup driver), its limit in bytes; {} for none."""
    try:
        limit = lablimits.labs_memory(project.settings.labs_mem_limit, host_memory)
    except ValueError as err:
        raise fail(str(err)) from None
    if limit is None:
        return {}
    found = c.run(CGROUP_INFO, hide=True, warn=True).stdout.split()
    driver, version = (found + ["", ""])[:2]
    if driver not in ("cgroupfs", "systemd") or version not in ("1", "2") or (
            driver, version) == ("systemd", "1"):
        raise fail(f"Docker uses the {driver or 'unknown'} cgroup driver on cgroup "
                   f"v{version or '?'}, where gpuhub cannot bound the labs' memory together: "
                   "set LABS_MEM_LIMIT=none (each lab keeps LAB_MEM_LIMIT)")
    step(f"labs together may use up to {limit // lablimits.UNITS['M']}M of memory "
         f"(LABS_MEM_LIMIT={project.settings.labs_mem_limit})")
    return {names.LABS_CGROUP_PARENT_ENV: names.labs_cgroup_parent(project.name, driver),
            names.SERVICES_CGROUP_PARENT_ENV: names.services_cgroup_parent(project.name, driver),
            names.LABS_MEMORY_ENV: str(limit), names.CGROUP_DRIVER_ENV: driver,
            names.CGROUP_VERSION_ENV: version}


def up_message(s, inventory) -> str:
    """Where the hub and the labs are, what the GPUs are, and what the origins cost."""
    redirect = (f"; http://{s.hub_domain}:{s.hub_http_redirect_port}/ redirects there"
                if s.hub_http_redirect_port else "")
    lines = [f"gpuhub is up: {origins.hub_origin(s)}/  ({gpu_inventory.summary(inventory)}"
             f"{redirect})"]
    if origins.isolated(s):
        lines.append(f"  each user's lab has its own origin: {origins.lab_origin_example(s)}/"
                     + ("  (this machine only: set HUB_DOMAIN to a DNS name with a wildcard "
                        "record for other machines)" if s.hub_domain == "localhost" else ""))
    else:
        lines.append(f"  WARNING: {origins.SHARED_ORIGIN_WARNING}")
    return "\n".join(lines)



def detect_gpus(project) -> list[gpu_inventory.Gpu]:
    """Discover host GPUs and apply GPU_DEVICES; warn once and go CPU-only when none."""
    setting = project.settings.gpu_devices
    if setting == "none":
        return []
    detected: list[gpu_inventory.Gpu] = []
    smi = shutil.which(project.settings.nvidia_smi)
    if smi:
        out = subprocess.run([smi, *gpu_inventory.QUERY[1:]], capture_output=True, text=True)
        if out.returncode != 0:
            # A GPU server whose driver cannot be read (typically: upgraded, not rebooted)
            # must not quietly become CPU-only: say why, and how to choose CPU-only.
            why = gpu_inventory.smi_failure(out.stdout, out.stderr, out.returncode)
            raise fail(f"nvidia-smi failed ({why}), so this host's GPUs cannot be listed; "
                       "after a driver upgrade, reboot (or reload the NVIDIA modules), or set "
                       "GPU_DEVICES=none in .env to run labs CPU-only")
        detected = gpu_inventory.parse_nvidia_smi(out.stdout)
        # Only -L lists MIG instances: a GPU in MIG mode is handed out as its instances.
        listed = subprocess.run([smi, *gpu_inventory.LIST[1:]], capture_output=True, text=True)
        if listed.returncode != 0:
            why = gpu_inventory.smi_failure(listed.stdout, listed.stderr, listed.returncode)
            raise fail(f"nvidia-smi -L failed ({why}), so this host's MIG instances cannot be "
                       "listed; fix the driver, or set GPU_DEVICES=none in .env")
        detected = gpu_inventory.with_mig(detected, listed.stdout)
    try:
        chosen = gpu_inventory.select(detected, setting)
    except ValueError as err:
        raise fail(str(err)) from None
    if not chosen:
        print("warning: no NVIDIA GPU found on this host; labs run CPU-only "
              "(set GPU_DEVICES in .env if this is wrong)", file=sys.stderr)
    return chosen


def docker_host_memory(c) -> int:
    """Bytes of memory of the machine the Docker engine (and so every lab) runs on; 0 if
    Docker does not say. Docker's figure, not this shell's: the engine may be remote, or
    in a VM (Docker Desktop) or an LXC container whose size LXCFS reports."""
    found = c.run("docker info --format '{{.MemTotal}}'", hide=True, warn=True)
    text = found.stdout.strip() if found.ok else ""
    return int(text) if text.isdigit() else 0


def hub_container(project) -> str:
    """Command printing the running hub container's ID."""
    return project.compose("ps --status running --quiet hub")


def exec_hub(project, args: str) -> str:
    """Run a command inside the hub container (no TTY, stdin passed through)."""
    return project.compose(f"exec -T hub {args}")


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
    off = [name for name, on in ((names.DOCKER_BROKER_SERVICE, s.docker_socket_proxy),
                                 (names.LAB_FIREWALL_SERVICE, s.lab_firewall),
                                 (names.LAB_MEMORY_SERVICE, s.labs_mem_limit != "none"))
           if not on]
    for service in off:
        ids = c.run(f"docker ps -aq --filter label={names.COMPOSE_PROJECT_LABEL}={project.name} "
                    f"--filter label={names.COMPOSE_SERVICE_LABEL}={service}",
                    hide=True, warn=True).stdout.split()
        if ids:
            step(f"removing {service} (switched off in the settings)")
            c.run("docker stop -t 30 " + " ".join(ids), hide=True, warn=True)
            c.run("docker rm -f " + " ".join(ids), hide=True, warn=True)
            if service == names.LAB_FIREWALL_SERVICE:  # its rules outlive it
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


def down(c, project, labs: bool) -> None:
    """Stop the labs (unless not ``labs``), then the compose project; the lab firewall's
    rules go once no lab runs."""
    if labs:
        ids = running_labs(c, project)
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
    running = running_labs(c, project)
    if running:
        print(f"lab firewall rules kept: {len(running)} lab(s) of {project.name} still run")
        return
    s = project.settings
    removed = c.run(shlex.join([
        "docker", "run", "--rm", "--network", "host", "--cap-drop", "ALL",
        "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW", "--security-opt", "no-new-privileges",
        "-e", f"COMPOSE_PROJECT_NAME={project.name}", "-e", f"GPUHUB_LABS_BRIDGE={project.labs_bridge}",
        s.lab_firewall_image, "python3", names.LAB_FIREWALL_SCRIPT, "remove"]),
        hide=True, warn=True)
    if removed.failed:
        raise fail(f"the lab firewall's rules for {project.name} could not be removed "
                   f"({removed.stderr.strip() or removed.stdout.strip()}); run `invoke down` again")


def restart(c, project) -> bool:
    """Restart the hub; False (and nothing done) when it is not running."""
    require_docker(c)
    if not hub_running(c, project):
        return False
    c.run(project.compose("restart hub"), env=project.env())
    wait_healthy(c, project)
    return True


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


def status(c, project) -> None:
    """The services (state, health, since) and the running labs."""
    services = c.run(f"docker ps -aq --filter label={names.COMPOSE_PROJECT_LABEL}={project.name}",
                     hide=True, warn=True).stdout.split()
    labs = running_labs(c, project)
    inspected = docker_inspect(c, services + labs)
    now = datetime.datetime.now(datetime.UTC)
    print(status_tables.services_table([i for i in inspected if i["Id"][:12] in
                                        {x[:12] for x in services}], now))
    print()
    running = [i for i in inspected if i["Id"][:12] in {x[:12] for x in labs}]
    print(status_tables.labs_table(running, now, image_ids(c, {i["Config"].get("Image", "")
                                                               for i in running} - {""})))


def image_ids(c, images: set[str]) -> dict[str, str]:
    """Each image name -> the image ID it names on this host now (names it no longer
    finds are left out)."""
    found = {}
    for image in sorted(images):
        result = c.run(f"docker image inspect -f '{{{{.Id}}}}' {shlex.quote(image)}",
                       hide=True, warn=True)
        if result.ok and result.stdout.strip():
            found[image] = result.stdout.strip()
    return found



def logs(c, project, follow: bool, tail: int) -> None:
    flags = f"--tail {int(tail)}" + (" --follow" if follow else "")
    c.run(project.compose(f"logs {flags} hub"), env=project.env(), pty=False)




def gpus(c, project, json_out: bool, watch: bool) -> None:
    """The hub's GPU table (holders, utilisation, memory, the line), once or redrawn."""
    interval = project.settings.gpu_sample_interval
    try:
        while True:
            board = read_board(c, project)
            text = jsonlib.dumps(board["rows"], indent=2) if json_out else board_text(board)
            if not watch:
                print(text)
                return
            # Clear the terminal, then the table: a live view without scrolling.
            print(f"\033[H\033[2J{text}\n\n(every {interval} s; Ctrl-C stops)", flush=True)
            time.sleep(interval)
    except KeyboardInterrupt:
        print()



def gpu_back(c, project, gpu: str) -> None:
    """Ask the hub to give a GPU out of service to labs again (it takes the request up
    within seconds); prints its answer."""
    done = c.run(project.exec_hub(f"python3 -m gpuhub.hub.hubmodes back {shlex.quote(gpu)}"),
                 env=project.env(), hide=True, warn=True)
    if done.failed:
        raise fail(stderr_tail(done).removeprefix("error: "))
    print(done.stdout.strip())


def read_board(c, project) -> dict:
    """The hub's GPU table (gpuhub.hub.hubmodes, run in the hub container) as JSON."""
    import json as jsonlib

    found = c.run(project.exec_hub("python3 -m gpuhub.hub.hubmodes"), env=project.env(),
                  hide=True, warn=True)
    if found.failed:
        raise fail(f"could not read the GPUs from the hub: {stderr_tail(found)}")
    try:
        board = jsonlib.loads(found.stdout)
        board["rows"]
    except (ValueError, KeyError, TypeError):
        raise fail(f"the hub printed no GPU table: {found.stdout.strip()[:200]!r}") from None
    return board


def board_text(board: dict) -> str:
    import time

    from gpuhub.core.gpureport import as_text, duration

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


class WorkVolume:
    """Compose mode: a user's work folder is a Docker volume on this host,
    ``<project>-home-<key>`` (``key`` is DockerSpawner's escaped user name)."""

    def __init__(self, project, key: str):
        self.key = key
        self.volume = names.work_volume_prefix(project.name) + key
        self.mount = self.volume  # what a helper container's `-v <mount>:...` names
        self.what = f"work volume {self.volume}"
        self.by_hand = f"`docker volume rm {self.volume}`"

    def exists(self, c) -> bool:
        found = c.run(f"docker volume inspect {shlex.quote(self.volume)}", hide=True, warn=True,
                      in_stream=False)
        if found.ok:
            return True
        if "no such volume" in (found.stderr or "").lower():
            return False
        raise fail(f"could not check for a kept {self.what}: {stderr_tail(found)}")

    def create_command(self, image: str) -> str:
        """(``image`` is for modes that need a helper container: Docker makes volumes.)"""
        return f"docker volume create {shlex.quote(self.volume)}"

    def remove_command(self, image: str) -> str:
        return f"docker volume rm {shlex.quote(self.volume)}"


def work_folder(project, name: str) -> WorkVolume:
    """The work folder of user ``name``."""
    return WorkVolume(project, names.escape_user(name))


def archived_work_folder(project, key: str) -> WorkVolume:
    """The work folder a backup's ``home-<key>`` member goes back into."""
    return WorkVolume(project, key)


def work_folders(c, project) -> list[WorkVolume]:
    """Every work volume of the project, deleted users' too (`invoke deluser` keeps them)."""
    prefix = names.work_volume_prefix(project.name)
    listed = c.run(f"docker volume ls -q --filter name={shlex.quote(prefix)}",
                   hide=True, warn=True)
    if listed.failed:
        raise fail("could not list the work volumes: "
                   + stderr_tail(listed, f"exit code {listed.return_code}"))
    # Docker's `--filter name=` matches anywhere in a name: keep only what starts with
    # the prefix (another project's volume may merely contain it).
    return [WorkVolume(project, name[len(prefix):]) for name in sorted(set(listed.stdout.split()))
            if name.startswith(prefix)]


def helper_image(c, project) -> str:
    """The image backup and restore run their short-lived helpers from: the hub's, built
    on this host."""
    image = project.settings.hub_image
    if c.run(f"docker image inspect {shlex.quote(image)}", hide=True, warn=True).failed:
        raise fail(f"the hub image {image!r} is not built on this host (HUB_IMAGE); "
                   "run `invoke build` first, then try again")
    return image


def running_labs(c, project) -> list[str]:
    """The IDs of the project's running labs."""
    return c.run(f"docker ps -q --filter label={names.LABEL_PROJECT}={project.name}",
                 hide=True, warn=True).stdout.split()
