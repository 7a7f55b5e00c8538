"""`invoke node-add`: what a new GPU node needs to join this Swarm (swarm mode)."""

from __future__ import annotations

import shlex

from invoke import task

from gpuhub.core import swarm
from gpuhub.tasks.deployment import fail, require_docker
from gpuhub.tasks.project import load
from gpuhub.tasks.swarmstack import require_manager


@task(help={"node": "Apply --label to this node (name or ID) now instead of only printing.",
            "label": "A node label KEY=VALUE for profiles' placement (repeatable).",
            "manager": "Print the manager join command instead of the worker one."},
      iterable=["label"])
def node_add(c, node="", label=None, manager=False):
    """Print what a new GPU node needs to join this Swarm (daemon.json, join command)."""
    project = load()
    if not project.swarm:
        raise fail("node-add is for swarm mode: set MODE=swarm in .env (see "
                   "docs/howto/swarm.md)")
    require_docker(c)
    require_manager(c)
    labels = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--label {item!r}: expected KEY=VALUE, e.g. --label gpu=a100")
        labels[key] = value
    role = "manager" if manager else "worker"
    join = c.run(f"docker swarm join-token {role}", hide=True).stdout
    command = next((ln.strip() for ln in join.splitlines() if "docker swarm join" in ln), "")
    print(swarm.node_add_text(join_command=command, kind=project.settings.swarm_gpu_resource,
                              labels=labels))
    if node and labels:
        args = " ".join(f"--label-add {shlex.quote(f'{k}={v}')}" for k, v in labels.items())
        c.run(f"docker node update {args} {shlex.quote(node)}", hide=True)
        print(f"labelled node {node}: {', '.join(f'{k}={v}' for k, v in labels.items())}")
