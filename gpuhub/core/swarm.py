"""Swarm mode: the stack file that runs the hub on a manager, and the GPUs the nodes offer.

In swarm mode Docker Swarm is the scheduler: each node advertises its GPUs as generic
resources (``node-generic-resources`` in its daemon.json, one ``NVIDIA-GPU=<uuid>`` entry
per GPU), a lab asks for N of them, and Swarm picks a node and the GPUs, exclusively.
The NVIDIA runtime on the node (``swarm-resource`` in its config.toml) turns the grant,
which Swarm passes as ``DOCKER_RESOURCE_<KIND>``, into devices. Nothing here schedules.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from gpuhub.core import names, origins
from gpuhub.core.labels import GPUS as LABEL_GPUS
from gpuhub.core.labels import PROJECT as LABEL_PROJECT
from gpuhub.core.labels import SINCE as LABEL_SINCE
from gpuhub.core.labels import USER as LABEL_USER
from gpuhub.core.labels import gpus_of
from gpuhub.core.lablimits import HOST_MEMORY_ENV
from gpuhub.core.settings import Settings

HUB_NODE_LABEL = "gpuhub.hub"  # the node that keeps the hub-data volume
HOMES_MOUNT = names.SWARM_HOMES_MOUNT  # SWARM_HOMES inside the hub
LAB_UID, LAB_GID = 1000, 100  # the Jupyter Docker Stacks user (jovyan:users)
# As in docker-compose.yml: the cheap probe from the hub image (gpuhub/services/healthcheck.py),
# which waits names.HEALTH_SETTLE seconds before a check that follows one that passed.
_PROBE = ["CMD", "python3", "-I", "-S", names.HEALTHCHECK_SCRIPT,
          "--settle", str(names.HEALTH_SETTLE)]
PROXY_HEALTHCHECK = [*_PROBE, "http://127.0.0.1:8000/_chp_healthz"]
# Not in the hub image: the gpu-sampler runs that image too, and needs none.
HUB_HEALTHCHECK = [*_PROBE, "http://127.0.0.1:8081/hub/health"]
HEALTH_TIMEOUT = f"{names.HEALTH_SETTLE + 5}s"  # a check's own wait, then its 2-s probe
HEALTH_INTERVAL = f"{names.HEALTH_INTERVAL}s"
PROXY_COMMAND = [
    "sh", "-c",
    f'CONFIGPROXY_AUTH_TOKEN="$$(cat {names.HUB_SECRETS_DIR}/{names.PROXY_TOKEN_SECRET})" '
    "exec configurable-http-proxy --ip=0.0.0.0 --port=8000 --api-ip=0.0.0.0 --api-port=8001 "
    "--default-target=http://hub:8081 --error-target=http://hub:8081/hub/error",
]


def proxy_command(settings: Settings) -> list[str]:
    """The proxy service's command: routing by host when labs have their own origins."""
    routing = origins.proxy_routing_args(settings)
    return [*PROXY_COMMAND[:2], f"{PROXY_COMMAND[2]} {routing}".rstrip()]


def image_ref(settings: Settings, image: str) -> str:
    """The name nodes pull ``image`` by: prefixed with REGISTRY when it is set."""
    return f"{settings.registry}/{image}" if settings.registry else image


def resource_env(kind: str) -> str:
    """The variable Swarm sets in a task's container to the generic resources it got:
    upper case whatever the kind's case (swarmkit api/genericresource/string.go EnvFormat)."""
    return f"DOCKER_RESOURCE_{kind}".upper()


def stack_spec(settings: Settings, *, profiles_path: Path, config_d: Path, secret_file: Path,
               metrics_secret_file: Path, inventory_json: str,
               lab_host_memory: int = 0, login_files: dict[str, Path] | None = None) -> dict:
    """The compose-format file ``docker stack deploy`` runs: hub and proxy on the hub node.

    ``lab_host_memory``: bytes of the smallest node labs may run on (LAB_MEM_LIMIT=auto).
    ``login_files``: the files a directory login names (AUTHENTICATOR=ldap or oidc), by
    the secret name the hub reads them under (names.LDAP_BIND_PASSWORD_SECRET...).
    """
    project = settings.compose_project_name
    # Swarm secrets cannot change; a new token (after a restore, say) gets a new name.
    digest = hashlib.sha256(Path(secret_file).read_bytes()).hexdigest()[:10]
    metrics_digest = hashlib.sha256(Path(metrics_secret_file).read_bytes()).hexdigest()[:10]
    on_hub_node = {
        "constraints": ["node.role == manager", f"node.labels.{HUB_NODE_LABEL} == true"],
    }
    # dnsrr: names resolve to the task's address; no virtual IP (IPVS) in between. One
    # replica, said: a deploy brings back a hub scaled to 0 (for its database's upgrade).
    deploy = {"replicas": 1, "endpoint_mode": "dnsrr", "placement": on_hub_node,
              "restart_policy": {"condition": "any"}}
    environment = {**settings.raw_env(), "GPUHUB_GPU_INVENTORY": inventory_json,
                   HOST_MEMORY_ENV: str(lab_host_memory or "")}
    # As compose's secrets (docker-compose.login.yml): files in /run/secrets, named after
    # their content's digest, since a Swarm secret cannot change.
    login_secrets = {
        name: {"file": str(path),
               "name": f"{project}-{name.replace('_', '-')}-"
                       f"{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10]}"}
        for name, path in (login_files or {}).items()}
    return {
        "version": "3.8",
        "services": {
            "hub": {
                "image": image_ref(settings, settings.hub_image),
                "environment": environment,
                "volumes": [
                    {"type": "bind", "source": settings.docker_socket,
                     "target": names.DOCKER_SOCKET_MOUNT},
                    {"type": "volume", "source": names.HUB_DATA_VOLUME,
                     "target": names.HUB_DATA_DIR},
                    {"type": "bind", "source": str(profiles_path),
                     "target": names.HUB_PROFILES_PATH, "read_only": True},
                    # The hub runs on this node (on_hub_node): the repository's folder.
                    {"type": "bind", "source": str(config_d),
                     "target": names.HUB_CONFIG_D, "read_only": True},
                    {"type": "bind", "source": settings.swarm_homes, "target": HOMES_MOUNT},
                ],
                "secrets": [{"source": name, "target": name}
                            for name in (names.PROXY_TOKEN_SECRET, names.METRICS_TOKEN_SECRET,
                                         *login_secrets)],
                "healthcheck": {"test": HUB_HEALTHCHECK, "interval": HEALTH_INTERVAL,
                                "timeout": HEALTH_TIMEOUT, "retries": names.HEALTH_RETRIES,
                                "start_period": "60s"},
                "networks": {"labs": {"aliases": ["hub"]}},
                "deploy": deploy,
            },
            "proxy": {
                "image": image_ref(settings, settings.hub_image),
                "command": proxy_command(settings),
                "healthcheck": {"test": PROXY_HEALTHCHECK, "interval": HEALTH_INTERVAL,
                                "timeout": HEALTH_TIMEOUT, "retries": names.HEALTH_RETRIES},
                "secrets": [{"source": names.PROXY_TOKEN_SECRET,
                             "target": names.PROXY_TOKEN_SECRET}],
                # mode host: published on the hub node itself, not through the routing
                # mesh, so the proxy sees real client addresses.
                "ports": [{"target": 8000, "published": settings.hub_port,
                           "protocol": "tcp", "mode": "host"}],
                "networks": {"labs": {"aliases": ["proxy"]}},
                "deploy": deploy,
            },
            # Keeps the labs network attached on every node. Swarm (20.10 and later)
            # re-checks a node's tasks whenever the node object changes, and wrongly
            # rejects tasks holding named generic resources (GPUs) then ("assigned node
            # no longer meets constraints"); the first lab on a node would otherwise
            # change it by attaching the network, and be rejected. It runs the lab
            # image, so every node (new ones too) pulls that ahead of the first lab.
            "labs-network": {
                "image": image_ref(settings, settings.lab_image),
                "command": ["sleep", "infinity"],
                "healthcheck": {"disable": True},
                "networks": ["labs"],
                "deploy": {"mode": "global", "endpoint_mode": "dnsrr",
                           "resources": {"limits": {"memory": "16M"}}},
            },
        },
        "secrets": {names.PROXY_TOKEN_SECRET: {"file": str(secret_file),
                                               "name": f"{project}-proxy-token-{digest}"},
                    names.METRICS_TOKEN_SECRET: {
                        "file": str(metrics_secret_file),
                        "name": f"{project}-metrics-token-{metrics_digest}"},
                    **login_secrets},
        "volumes": {names.HUB_DATA_VOLUME: {}},
        "networks": {"labs": {"name": names.labs_network(project), "driver": "overlay",
                              "attachable": True}},
    }


def stack_yaml(spec: dict) -> str:
    """YAML for ``docker stack deploy -c -`` (JSON is YAML)."""
    return json.dumps(spec, indent=2)


@dataclass(frozen=True)
class NodeGpu:
    node: str  # hostname
    node_id: str
    uuid: str
    availability: str  # active, pause or drain
    state: str  # ready, down...


def smallest_node_memory(nodes: list[dict]) -> int:
    """Bytes of memory of the smallest node that may run labs (not drained); 0: none.

    LAB_MEM_LIMIT=auto must fit every node a lab may land on, not the manager's size.
    """
    sizes = [node.get("Description", {}).get("Resources", {}).get("MemoryBytes") or 0
             for node in nodes if node.get("Spec", {}).get("Availability") != "drain"]
    sizes = [size for size in sizes if size > 0]
    return min(sizes) if sizes else 0


def node_gpus(nodes: list[dict], kind: str) -> list[NodeGpu]:
    """The GPUs each node advertises, from ``docker node inspect`` output."""
    gpus = []
    for node in nodes:
        host = node.get("Description", {}).get("Hostname", node.get("ID", "?"))
        resources = node.get("Description", {}).get("Resources", {}).get("GenericResources") or []
        for res in resources:
            named = res.get("NamedResourceSpec") or {}
            if named.get("Kind") == kind:
                gpus.append(NodeGpu(node=host, node_id=node.get("ID", ""), uuid=named["Value"],
                                    availability=node.get("Spec", {}).get("Availability", "?"),
                                    state=node.get("Status", {}).get("State", "?")))
    return sorted(gpus, key=lambda g: (g.node, g.uuid))


def assigned_gpus(task: dict, kind: str) -> list[str]:
    """The GPU UUIDs Swarm gave a task (``docker inspect <task>``)."""
    # Docker 20.10's API calls the field GenericResources; its docs, AssignedGenericResources.
    given = task.get("AssignedGenericResources") or task.get("GenericResources") or []
    return [r["NamedResourceSpec"]["Value"] for r in given
            if (r.get("NamedResourceSpec") or {}).get("Kind") == kind]


def lab_labels(task: dict, kind: str) -> dict:
    """A running lab task as the labels the single-host GPU report reads."""
    labels = dict(task.get("Spec", {}).get("ContainerSpec", {}).get("Labels") or {})
    labels[LABEL_GPUS] = ",".join(assigned_gpus(task, kind))
    return labels


def report(gpus: list[NodeGpu], tasks: list[dict], kind: str) -> list[dict]:
    """One row per GPU of the Swarm: node, UUID, node availability, holder and since."""
    holders: dict[str, list[tuple[str, str]]] = {}
    for task in tasks:
        labels = lab_labels(task, kind)
        for uuid in gpus_of(labels):
            holders.setdefault(uuid, []).append((labels.get(LABEL_USER, "?"),
                                                 labels.get(LABEL_SINCE, "")))
    return [{"node": g.node, "uuid": g.uuid, "availability": g.availability,
             "state": g.state,
             "held_by": sorted(u for u, _ in holders.get(g.uuid, [])),
             "since": min((s for _, s in holders.get(g.uuid, []) if s), default="")}
            for g in gpus]


def report_text(rows: list[dict]) -> str:
    if not rows:
        return ("No node of this Swarm advertises GPUs: labs run CPU-only "
                "(`invoke node-add` shows what a GPU node needs).")
    table = [("NODE", "GPU", "NODE STATE", "HELD BY", "SINCE")]
    for r in rows:
        table.append((r["node"], r["uuid"], f"{r['state']}/{r['availability']}",
                      ",".join(r["held_by"]) or "-", r["since"] or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


def project_filter(project: str) -> str:
    return f"label={LABEL_PROJECT}={project}"


def node_add_text(*, join_command: str, kind: str, labels: dict[str, str]) -> str:
    """What an admin runs on a new GPU node to join this Swarm with its GPUs."""
    label_args = " ".join(f"--label-add {shlex.quote(f'{k}={v}')}" for k, v in labels.items())
    return f"""\
# On the new node (as root), with the NVIDIA driver and nvidia-container-toolkit installed:
# toolkit 1.19 or newer (`nvidia-ctk --version`). 1.18.x ignores swarm-resource in its
# default mode, so labs would hold a GPU in Swarm's books and get none (with 1.18.x also set
# mode = "legacy" under [nvidia-container-runtime] in config.toml); below 1.17.8 the
# toolkit has a container escape (CVE-2025-23266).

# 1. Advertise each GPU to Swarm and let the NVIDIA runtime read Swarm's grant.
#    /etc/docker/daemon.json (merge with what is there):
python3 - <<'PY'
import json, pathlib, subprocess
rows = subprocess.run(["nvidia-smi", "--query-gpu=uuid,mig.mode.current",
                       "--format=csv,noheader"], capture_output=True, text=True,
                      check=True).stdout.splitlines()
uuids = []
for uuid, mig in (r.split(", ", 1) for r in rows if r.strip()):
    if mig.strip() == "Enabled":  # swarm mode hands out whole GPUs, never MIG instances
        print("not advertising", uuid, "(MIG mode: nvidia-smi -mig 0 on it, or MODE=compose)")
    else:
        uuids.append(uuid)
path = pathlib.Path("/etc/docker/daemon.json")
conf = json.loads(path.read_text()) if path.exists() else {{}}
conf["node-generic-resources"] = ["{kind}=" + u for u in uuids]
conf["default-runtime"] = "nvidia"
conf.setdefault("runtimes", {{}})["nvidia"] = {{"path": "nvidia-container-runtime", "runtimeArgs": []}}
path.write_text(json.dumps(conf, indent=2) + "\\n")
print("advertising", len(uuids), "GPU(s):", ", ".join(uuids))
PY
#    /etc/nvidia-container-runtime/config.toml: uncomment or add, under the top level,
#        swarm-resource = "{resource_env(kind)}"
systemctl restart docker

# 2. Mount the shared homes (SWARM_HOMES) at the same path as on every other node.

# 3. Join the Swarm:
{join_command}

# Then, on a manager, label the node for profiles' placement constraints:
#   docker node update {label_args or '--label-add gpu=a100'} <node>
"""
