"""Swarm mode (MODE=swarm) of the stack tasks: deploy, remove and inspect the hub's stack.

The same functions as gpuhub.tasks.composestack (up, down, restart, status, logs, gpus);
`Project.stack` picks one, so the tasks never ask which mode they are in.

Run these on the manager that keeps the hub (``invoke up`` labels it): the hub's
container, its data volume and PROFILES_FILE live on that node.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

from invoke import Exit

from gpuhub.core import gpus as gpu_inventory
from gpuhub.core import lablimits, names, origins, swarm
from gpuhub.tasks import hubdatabase
from gpuhub.tasks import statustables as status_tables
from gpuhub.tasks.deployment import (
    docker_inspect,
    fail,
    helper_container,
    require_running,
    stderr_tail,
    step,
)
from gpuhub.tasks.images import build_images, push_images


def require_manager(c) -> str:
    """This engine's Swarm node ID; exit clearly unless it is a manager."""
    out = c.run("docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} "
                "{{.Swarm.NodeID}}'", hide=True, warn=True).stdout.split()
    if len(out) < 3 or out[0] != "active":
        raise fail("MODE=swarm but this Docker engine is not in a Swarm: run `docker swarm "
                   "init` here (or point DOCKER_HOST at a manager), then `invoke up`")
    if out[1] != "true":
        raise fail("MODE=swarm but this Docker engine is a Swarm worker: run invoke on a "
                   "manager (`docker node ls` there shows the nodes)")
    return out[2]


def nodes(c) -> list[dict]:
    ids = c.run("docker node ls -q", hide=True).stdout.split()
    return json.loads(c.run("docker node inspect " + " ".join(ids), hide=True).stdout) if ids else []


def inventory(c, project, found_nodes: list[dict] | None = None) -> list[gpu_inventory.Gpu]:
    """Every GPU the Swarm's nodes advertise, as the hub's GPU inventory."""
    found_nodes = nodes(c) if found_nodes is None else found_nodes
    found = swarm.node_gpus(found_nodes, project.settings.swarm_gpu_resource)
    return [gpu_inventory.Gpu(index=f"{g.node}/{i}", uuid=g.uuid, name=f"GPU on {g.node}")
            for i, g in enumerate(found)]


def lab_services(c, project) -> list[str]:
    return c.run(f"docker service ls -q --filter {swarm.project_filter(project.name)}",
                 hide=True, warn=True).stdout.split()


def running_lab_tasks(c, project) -> list[dict]:
    ids = []
    for service in lab_services(c, project):
        ids += c.run(f"docker service ps -q --filter desired-state=running {service}",
                     hide=True, warn=True).stdout.split()
    return json.loads(c.run("docker inspect " + " ".join(ids), hide=True).stdout) if ids else []


def deploy(c, project, timeout: float) -> list[gpu_inventory.Gpu]:
    """Deploy (or update) the hub's stack and wait until the hub is healthy."""
    s = project.settings
    node_id = require_manager(c)
    if not Path(s.swarm_homes).is_dir():
        raise fail(f"SWARM_HOMES={s.swarm_homes!r} is not a folder on this node; mount the "
                   "shared homes there (the same path on every node) and run `invoke up` again")
    found_nodes = nodes(c)
    gpus = inventory(c, project, found_nodes)
    memory = swarm.smallest_node_memory(found_nodes)
    if s.lab_mem_limit == "auto" and memory:
        step(lablimits.auto_memory_note(memory) + ", from the smallest node")
    secret = project.ensure_secret(names.PROXY_TOKEN_FILE)
    spec = swarm.stack_spec(s, profiles_path=project.profiles_path,
                            config_d=project.root / names.CONFIG_D_FOLDER,
                            login_files=login_secret_files(project),
                            secret_file=secret,
                            metrics_secret_file=project.ensure_secret(names.METRICS_TOKEN_FILE),
                            inventory_json=gpu_inventory.to_json(gpus),
                            lab_host_memory=memory)
    # The hub-data volume lives on this node: pin the hub (and proxy) here.
    c.run(f"docker node update --label-add {swarm.HUB_NODE_LABEL}=true {node_id}", hide=True)
    step(f"deploying stack {project.name} (hub on this node)")
    result = stack_deploy(c, project.name, swarm.stack_yaml(spec))
    if result.failed:
        raise fail(f"docker stack deploy failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    wait_healthy(c, project, timeout)
    return gpus


def stack_deploy(c, name: str, compose_yaml: str):
    """`docker stack deploy --prune` of ``compose_yaml``, given as a file in a private
    temporary folder (mode 0700), not on standard input: Invoke feeds an in_stream without a
    file descriptor to the process one byte every 10 ms, which held every deploy for over a
    minute."""
    with tempfile.TemporaryDirectory(prefix="gpuhub-stack-") as folder:
        compose = Path(folder) / "stack.yml"
        compose.write_text(compose_yaml)
        return c.run(f"docker stack deploy --prune -c {shlex.quote(str(compose))} "
                     f"{shlex.quote(name)}", warn=True, hide="out")


def login_secret_files(project) -> dict:
    """The login files the settings name, by the secret name the hub reads each under."""
    s = project.settings
    named = {names.LDAP_BIND_PASSWORD_SECRET: s.ldap_bind_password_file,
             names.LDAP_CA_SECRET: s.ldap_ca_file,
             names.OIDC_CLIENT_SECRET_SECRET: s.oidc_client_secret_file,
             names.OIDC_CA_SECRET: s.oidc_ca_file}
    return {name: project.path(value) for name, value in named.items() if value}


def _essence(spec: dict) -> str:
    """What a deploy or `service update --force` changes in a task spec."""
    cs = spec.get("ContainerSpec") or {}
    return json.dumps([cs.get("Image"), cs.get("Env"), cs.get("Mounts"), cs.get("Args"),
                       spec.get("ForceUpdate", 0)], sort_keys=True)


def current_container(c, service: str) -> str:
    """The healthy container of ``service``'s current spec on this node, or ''.

    After a deploy the old task stays healthy for a while: only a task made from the
    service's current spec counts.
    """
    found = c.run(f"docker service inspect {shlex.quote(service)}", hide=True, warn=True)
    if found.failed:
        return ""
    want = _essence(json.loads(found.stdout)[0]["Spec"]["TaskTemplate"])
    ids = c.run(f"docker service ps -q --filter desired-state=running {shlex.quote(service)}",
                hide=True, warn=True).stdout.split()
    tasks = json.loads(c.run("docker inspect " + " ".join(ids), hide=True).stdout) if ids else []
    for t in tasks:
        cid = ((t.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID", "")
        if t["Status"].get("State") != "running" or _essence(t["Spec"]) != want or not cid:
            continue
        health = c.run(f"docker inspect -f '{{{{.State.Health.Status}}}}' {cid}",
                       hide=True, warn=True).stdout.strip()
        if health == "healthy":
            return cid
    return ""


def wait_healthy(c, project, timeout: float) -> None:
    """Wait for the hub and proxy of the current spec to be healthy (this node)."""
    deadline = time.monotonic() + timeout
    services = [project.hub_service, f"{project.name}_proxy"]
    while time.monotonic() < deadline:
        services = [s for s in services if not current_container(c, s)]
        if not services:
            return
        time.sleep(1)
    for service in services:
        c.run(f"docker service ps --no-trunc {service}", warn=True)
        c.run(f"docker service logs --tail 40 {service}", warn=True)
    raise fail(f"{' and '.join(services)} not healthy after {timeout:.0f}s; the tasks and "
               "last log lines are above")


def up(c, project, *, build: bool, timeout: float, profiles, hub_was_running: bool,
       proxy_was_running: bool) -> str:
    """Build and push the images, then deploy the stack; what to tell the admin. (The
    profiles' images are pulled by the nodes that run them.)"""
    refuse_mig_slices(profiles)
    if build:
        build_images(c, project)
        push_images(c, project)
    # A new JupyterHub meets the old one's database here, before the stack is deployed.
    upgraded = hubdatabase.bring_to_image(c, project, hub_switch(c, project, timeout))
    if upgraded:
        step(upgraded.message)
    try:
        found = deploy(c, project, timeout)
    except Exit as failed:
        if upgraded:
            step(f"the hub database before its upgrade: {upgraded.backup}")
        raise failed
    return (f"gpuhub is up on the Swarm: {origins.hub_origin(project.settings)}/  "
            f"({gpu_inventory.summary(found)}; HUB_DOMAIN and *.HUB_DOMAIN must name "
            "this node, or any node: every node publishes HUB_PORT)")


def refuse_mig_slices(profiles) -> None:
    """Swarm hands out GPUs as generic resources of one kind, with no size: a profile asking
    for MIG instances of one size (``gpu_slice``) would be given whatever Swarm picks."""
    sliced = [p.slug for p in profiles.profiles if p.gpu_slice]
    if sliced:
        raise fail(f"profile(s) {', '.join(sliced)} in PROFILES_FILE ask for MIG instances "
                   "(gpu_slice): swarm mode hands out whole GPUs only (Swarm's generic "
                   "resources have no slice sizes); remove gpu_slice from them, or use "
                   "MODE=compose")


def down(c, project, labs: bool) -> None:
    """Remove the stack (and the labs' services); volumes and homes are kept."""
    if labs:
        services = lab_services(c, project)
        if services:
            step(f"stopping {len(services)} lab(s)")
            c.run("docker service rm " + " ".join(services), hide=True, warn=True)
    c.run(f"docker stack rm {shlex.quote(project.name)}", warn=True)
    # stack rm returns at once; the next `invoke up` needs the network gone first.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if c.run(f"docker network inspect {names.labs_network(project.name)}", hide=True,
                 warn=True).failed:
            return
        if labs or not lab_services(c, project):
            time.sleep(0.5)
        else:
            return  # labs kept: they keep the network


def restart(c, project) -> bool:
    require_running(c, project)
    c.run(f"docker service update --force --detach {project.hub_service}", hide=True)
    wait_healthy(c, project, 180)
    return True


def status(c, project) -> None:
    """The stack's services (node, state, health, since) and the running labs."""
    ids = c.run(f"docker stack ps -q --filter desired-state=running {shlex.quote(project.name)}",
                hide=True, warn=True).stdout.split()
    tasks = docker_inspect(c, ids)
    services = {sid: name.removeprefix(f"{project.name}_") for sid, name in (
        line.split(" ", 1) for line in c.run(
            f"docker service ls --filter label=com.docker.stack.namespace={project.name} "
            "--format '{{.ID}} {{.Name}}'", hide=True, warn=True).stdout.splitlines()
        if " " in line)}
    # `docker service ls` prints short IDs; tasks carry the full ones.
    service_names = {t["ServiceID"]: next((n for sid, n in services.items()
                                           if t["ServiceID"].startswith(sid)), "?")
                     for t in tasks if t.get("ServiceID")}
    node_names = {n["ID"]: n.get("Description", {}).get("Hostname", "?") for n in nodes(c)}
    containers = [cid for t in tasks if (cid := ((t.get("Status") or {}).get(
        "ContainerStatus") or {}).get("ContainerID"))]
    health = {i["Id"]: (i.get("State", {}).get("Health") or {}).get("Status", "-")
              for i in docker_inspect(c, containers)}  # this node's containers only
    now = datetime.datetime.now(datetime.UTC)
    print(status_tables.swarm_services_table(tasks, service_names, node_names, health, now))
    print()
    kind = project.settings.swarm_gpu_resource
    print(status_tables.labs_table([{"Config": {"Labels": swarm.lab_labels(t, kind)}}
                                    for t in running_lab_tasks(c, project)], now))


def logs(c, project, follow: bool, tail: int) -> None:
    flags = f"--tail {int(tail)}" + (" --follow" if follow else "")
    c.run(f"docker service logs {flags} {project.hub_service}", pty=False)


def compose_by_hand(c, project, args: list[str]) -> int:
    raise fail(f"MODE=swarm runs no compose project: use `docker stack ps {project.name}`, "
               f"`docker service ls` and `docker service logs`, or the tasks")


def gpus_report(c, project) -> list[dict]:
    kind = project.settings.swarm_gpu_resource
    return swarm.report(swarm.node_gpus(nodes(c), kind), running_lab_tasks(c, project), kind)


def gpu_back(c, project, gpu: str) -> None:
    """Swarm places labs on GPUs itself: gpuhub takes none out of service there."""
    raise fail("in swarm mode Swarm chooses the GPUs, and gpuhub takes none out of service; "
               "drain a node with a faulty GPU instead (`docker node update --availability "
               "drain <node>`)")


def gpus(c, project, json_out: bool, watch: bool) -> None:
    """Each GPU of the Swarm and the lab holding it (no utilisation yet: no sampler)."""
    rows = gpus_report(c, project)
    print(json.dumps(rows, indent=2) if json_out else swarm.report_text(rows))


def hub_container(project) -> str:
    """Command printing the running hub container's ID on this node."""
    return (f"docker ps --quiet --filter status=running --filter "
            f"label=com.docker.swarm.service.name={shlex.quote(project.hub_service)}")


def exec_hub(project, args: str) -> str:
    """Run a command inside the hub container (no TTY, stdin passed through). The hub runs
    on the node labelled for it: the manager invoke talks to."""
    return f"docker exec -i \"$({hub_container(project)} | head -n 1)\" {args}"


def proxy_running(c, project) -> bool:
    """Whether the proxy's service exists: Swarm's routing mesh then holds HUB_PORT."""
    return c.run(f"docker service inspect {shlex.quote(project.name + '_proxy')}",
                 hide=True, warn=True).ok


class SwarmHome:
    """Swarm mode: a user's work folder is SWARM_HOMES/<key>, mounted on this manager too
    (``key`` is DockerSpawner's escaped user name)."""

    def __init__(self, project, key: str):
        self.homes = Path(project.settings.swarm_homes)
        self.key = key
        self.path = self.homes / key
        self.mount = str(self.path)  # what a helper container's `-v <mount>:...` names
        self.what = f"work folder {self.path}"
        self.by_hand = f"`sudo rm -r {self.path}`"

    def exists(self, c) -> bool:
        if not self.homes.is_dir():
            raise fail(f"SWARM_HOMES={str(self.homes)!r} is not a folder on this node; run "
                       "invoke on the manager that runs the hub (it mounts SWARM_HOMES)")
        return os.path.lexists(self.path)

    def _in_homes(self, image: str, args: str) -> str:
        # As root in a helper container: the folders belong to the labs' user.
        return helper_container(image, str(self.homes), "/homes", args)

    def create_command(self, image: str) -> str:
        return self._in_homes(image, f"mkdir -- /homes/{shlex.quote(self.key)}")

    def remove_command(self, image: str) -> str:
        return self._in_homes(image, f"rm -rf -- /homes/{shlex.quote(self.key)}")


def work_folder(project, name: str) -> SwarmHome:
    """The work folder of user ``name``."""
    return SwarmHome(project, names.escape_user(name))


# A folder name under SWARM_HOMES that backup takes and restore makes: never ".", ".."
# or a path.
FOLDER_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def archived_work_folder(project, key: str) -> SwarmHome:
    """The folder a backup's ``home-<key>`` member goes back into."""
    if not FOLDER_KEY.fullmatch(key):
        raise fail(f"the backup's work folder {key!r} cannot be a folder under SWARM_HOMES; "
                   "nothing was changed")
    return SwarmHome(project, key)


def work_folders(c, project) -> list[SwarmHome]:
    """Every folder under SWARM_HOMES, deleted users' too (`invoke deluser` keeps them).

    Links and files there are left out, with a warning: a backup copies folders only,
    never what a link points to.
    """
    homes = Path(project.settings.swarm_homes)
    if not homes.is_dir():
        raise fail(f"SWARM_HOMES={str(homes)!r} is not a folder on this node; run invoke on "
                   "the manager that runs the hub (it mounts SWARM_HOMES)")
    found = []
    for entry in sorted(os.scandir(homes), key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False) and FOLDER_KEY.fullmatch(entry.name):
            found.append(SwarmHome(project, entry.name))
        else:
            print(f"warning: {entry.path} is not a work folder (a link, a file or an odd "
                  "name); not backed up", file=sys.stderr)
    return found


def helper_image(c, project) -> str:
    """The image backup and restore run their short-lived helpers from: the hub's, as the
    hub's service runs it on this manager (Swarm pulls it by digest, untagged), or else
    pulled from REGISTRY."""
    found = c.run("docker service inspect --format "
                  "'{{.Spec.TaskTemplate.ContainerSpec.Image}}' " + shlex.quote(project.hub_service),
                  hide=True, warn=True)
    running = found.stdout.strip() if found.ok else ""
    if running and c.run(f"docker image inspect {shlex.quote(running)}", hide=True, warn=True).ok:
        return running
    image = swarm.image_ref(project.settings, project.settings.hub_image)
    if c.run(f"docker image inspect {shlex.quote(image)}", hide=True, warn=True).ok:
        return image
    return pulled_hub_image(c, project)


def pulled_hub_image(c, project) -> str:
    """The hub image as REGISTRY has it now: what the next deploy runs (`docker stack deploy`
    resolves the tag there); the copy on this node when there is no registry to ask."""
    image = swarm.image_ref(project.settings, project.settings.hub_image)
    step(f"pulling {image} (the hub image)")
    pulled = c.run(f"docker pull {shlex.quote(image)}", hide=True, warn=True)
    if pulled.ok:
        return image
    if not project.settings.registry and c.run(f"docker image inspect {shlex.quote(image)}",
                                               hide=True, warn=True).ok:
        return image
    raise fail(f"could not pull the hub image {image!r} from REGISTRY "
               f"({stderr_tail(pulled)}); run `invoke build --push` first, then try again")


def hub_switch(c, project, timeout: float) -> hubdatabase.HubSwitch:
    """The hub database step's Swarm part: the hub image REGISTRY has (what the deploy
    runs), the hub service scaled to 0 (its task's container ends: the database is closed),
    and back to 1, the old spec, healthy, when the step fails."""

    def start_old() -> None:
        c.run(f"docker service scale --detach=false {shlex.quote(project.hub_service)}=1",
              hide=True, warn=True)
        try:
            wait_healthy(c, project, min(timeout, 180))
        except Exit as failed:
            step(f"the old hub did not start again: {failed.message}")

    return hubdatabase.HubSwitch(
        image=pulled_hub_image(c, project),
        running=lambda: c.run(f"docker service inspect {shlex.quote(project.hub_service)}",
                              hide=True, warn=True).ok,
        stop=lambda: c.run(f"docker service scale --detach=false "
                           f"{shlex.quote(project.hub_service)}=0", hide=True),
        start_old=start_old)


def running_labs(c, project) -> list[str]:
    """The IDs of the project's running lab tasks, on any node."""
    return [t["ID"] for t in running_lab_tasks(c, project)]
