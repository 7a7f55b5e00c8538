"""Building and pushing gpuhub's images (`invoke build`, and `invoke up` in both modes)."""

from __future__ import annotations

import shlex

from gpuhub.core.swarm import image_ref
from gpuhub.tasks.deployment import fail, step


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
