"""A MockContext that answers like a Docker host, for the task unit tests."""

from __future__ import annotations

import re

from invoke import MockContext, Result

DOCKER_INFO = "docker info --format '{{.ServerVersion}}'"
COMPOSE_VERSION = "docker compose version --short"
DOCKER_MEMORY = "docker info --format '{{.MemTotal}}'"
CGROUP_INFO = "docker info --format '{{.CgroupDriver}} {{.CgroupVersion}}'"
# `invoke up` asks whether the engine may give the hub's services a negative OOM score.
OOM_PROBE = ("docker run --rm --network none --oom-score-adj -500 --entrypoint cat "
             "gpuhub-hub:latest /proc/self/oom_score_adj")
# ... and whether its storage can bound a lab's writable layer (LAB_DISK_LIMIT=auto: 20G).
DISK_PROBE = ("docker run --rm --network none --storage-opt "
              f"size={20 * 1024 ** 3} --entrypoint true gpuhub-lab:latest")
HOST_PROBES = [OOM_PROBE, DISK_PROBE]
HUBDB_CURRENT = ('{"state": "current", "revision": "f460b0348206", "head": "f460b0348206", '
                 '"jupyterhub": "6.1.1"}')


def labs_bridge_check(project: str = "gpuhub") -> str:
    """The command `invoke up` asks the labs network's bridge name with."""
    return ("docker network inspect --format "
            "'{{index .Options \"com.docker.network.bridge.name\"}} {{.EnableIPv6}}' "
            + f"{project}-labs")


PROBE_SUBNET = "172.30.0.0/16"  # what Docker's allocator gives the labs subnet probe


def labs_network_setup(project: str = "gpuhub") -> list[str]:
    """The commands `invoke up` makes a new labs network's plan with (labs apart)."""
    probe = f"{project}-labs-probe"
    return [f"docker network inspect {project}-labs", f"docker network rm {probe}",
            f"docker network create --label gpuhub.labs-subnet-probe=1 {probe}",
            f"docker network inspect {probe}", f"docker network rm {probe}"]


def remove_firewall_rules(project: str = "gpuhub", bridge: str | None = None,
                          image: str = "gpuhub-lab-firewall:latest") -> str:
    """The command `invoke down` removes the lab firewall's rules with."""
    return ("docker run --rm --network host --cap-drop ALL --cap-add NET_ADMIN --cap-add "
            "NET_RAW --security-opt no-new-privileges -e COMPOSE_PROJECT_NAME=" + project
            + f" -e GPUHUB_LABS_BRIDGE={bridge or project + '-labs'} {image} python3 "
            "/usr/local/lib/gpuhub/labfirewall.py remove")


def docker_context(*pairs, running: bool, **defaults: Result) -> MockContext:
    """Docker answers and the hub runs if ``running``; ``(command or regex, Result)`` pairs
    and ``defaults`` (command -> Result) win. The labs network does not exist yet. Any other
    command succeeds silently, so tests assert the exact list of commands run."""
    results = dict(pairs)
    results.setdefault(DOCKER_INFO, Result("27.3.1\n"))
    results.setdefault(COMPOSE_VERSION, Result("2.29.7\n"))
    results.setdefault(CGROUP_INFO, Result("cgroupfs 1\n"))
    results.setdefault(DOCKER_MEMORY, Result(f"{16 * 1024**3}\n"))
    for command, result in defaults.items():
        results.setdefault(command, result)
    results[re.compile(r".* ps --status running --quiet hub$")] = Result("f00d\n" if running else "")
    results.setdefault(re.compile(r"^docker network inspect \S+-labs-probe$"), Result(
        f'[{{"IPAM": {{"Config": [{{"Subnet": "{PROBE_SUBNET}"}}]}}}}]'))
    results.setdefault(re.compile(r"^docker network inspect "), Result(
        stderr="Error: No such network", exited=1))
    # The hub database is at the hub image's schema (gpuhub.tasks.hubdatabase).
    results.setdefault(re.compile(r".* -m gpuhub\.services\.hubdb check$"), Result(
        HUBDB_CURRENT + "\n"))
    results[re.compile(".*", re.DOTALL)] = Result()
    return MockContext(run=results, repeat=True)


def commands(c) -> list[str]:
    """The command lines ``c.run`` was called with, in order."""
    return [call.args[0] for call in c.run.call_args_list]
