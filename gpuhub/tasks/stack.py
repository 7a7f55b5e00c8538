"""Tasks that build, start, stop and inspect the stack, in either mode: what differs
between compose and swarm mode is in gpuhub.tasks.composestack and swarmstack, which
`Project.stack` picks."""

from __future__ import annotations

import os
import secrets
import shlex
import sys

from invoke import task
from invoke.exceptions import Exit

from gpuhub.core.names import USERCLI_ALREADY as ALREADY
from gpuhub.tasks.deployment import (
    fail,
    hub_running,
    load_profiles,
    port_free,
    require_docker,
    require_running,
    run_usercli,
)
from gpuhub.tasks.images import build_images, push_images
from gpuhub.tasks.login import check_files as check_login_files
from gpuhub.tasks.project import load
from gpuhub.tasks.tlsfiles import check_files as check_tls_files


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
    hub_was_running = hub_running(c, project)
    proxy_was_running = project.stack.proxy_running(c, project)
    running = hub_was_running or proxy_was_running
    if not running and not port_free(s.hub_bind_address, s.hub_port):
        raise fail(f"port {s.hub_port} on {s.hub_bind_address} is already in use; "
                   "set HUB_PORT in .env to a free port")
    if (not running and s.hub_http_redirect_port
            and not port_free(s.hub_bind_address, s.hub_http_redirect_port)):
        raise fail(f"port {s.hub_http_redirect_port} on {s.hub_bind_address} is already in "
                   "use; set HUB_HTTP_REDIRECT_PORT in .env to a free port, or empty it")
    message = project.stack.up(c, project, build=build, timeout=timeout, profiles=profiles,
                               hub_was_running=hub_was_running,
                               proxy_was_running=proxy_was_running)
    create_missing_admins(c, project)
    print(message)


def create_missing_admins(c, project) -> None:
    """Create each ADMIN_USERS account that does not exist yet; print its password once.
    (With a directory, ADMIN_USERS are made admins at their first login instead.)"""
    if project.settings.authenticator != "native":
        return
    for name in project.settings.admin_users:
        # One process in the hub checks and creates (each costs 1.5-2.5 s there); the
        # password is used only if the admin has none yet.
        password = secrets.token_urlsafe(12)
        made = run_usercli(c, project, f"add {shlex.quote(name)} --admin --if-missing",
                           stdin=password, also_ok=(ALREADY,),
                           what=f"could not create admin {name!r}")
        if made.return_code == ALREADY:
            continue
        print(f"created admin {name!r} with password: {password}\n"
              "  (shown only this once and stored only as a hash; "
              f"change it with `invoke passwd {name}`)")


@task(help={"labs": "Also stop the users' lab containers (default: yes)."})
def down(c, labs=True):
    """Stop the hub (and the labs); users, passwords and work folders are kept."""
    project = load()
    require_docker(c)
    project.stack.down(c, project, labs)


@task
def restart(c):
    """Restart the hub container; running labs keep running and are reattached."""
    project = load()
    if not project.stack.restart(c, project):  # stopped or exited: start what is not running
        print("the hub is not running: starting the stack as `invoke up --no-build` does")
        up(c, build=False)
        return
    print("hub restarted")


@task
def status(c):
    """Show the hub container, its health, and the running labs."""
    project = load()
    require_docker(c)
    project.stack.status(c, project)


@task(help={"follow": "Keep printing new log lines until Ctrl-C.",
            "tail": "How many recent lines to show."})
def logs(c, follow=False, tail=200):
    """Show the hub's logs."""
    project = load()
    require_docker(c)
    project.stack.logs(c, project, follow, tail)


@task
def compose(c):
    """Run docker compose with the files and variables `invoke up` uses: `invoke compose -- ARGS`."""
    project = load()
    require_docker(c)
    # The words after `--` as given (invoke's remainder is one string, its quoting lost).
    args = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else shlex.split(c.remainder)
    if not args:
        raise fail("say what compose should run, e.g. `invoke compose -- ps` or "
                   "`invoke compose -- up -d --force-recreate`")
    code = project.stack.compose_by_hand(c, project, args)
    if code:
        raise Exit(code=code)


@task(help={"json": "Print JSON instead of a table.",
            "watch": "Redraw the table every GPU_SAMPLE_INTERVAL seconds, until Ctrl-C.",
            "back": "Give this GPU (index or UUID) out of service to labs again."})
def gpus(c, json=False, watch=False, back=""):
    """Show each GPU: who holds it, since when, its use, and any out of service after a fault."""
    project = load()
    require_running(c, project)
    if back:
        project.stack.gpu_back(c, project, back)
        return
    project.stack.gpus(c, project, json, watch)


@task(help={"json": "Print JSON instead of lines.",
            "tensorflow": "Run TensorFlow on the GPU in the throw-away lab (default: yes)."})
def doctor(c, json=False, tensorflow=True):
    """Check this GPU server before users do: driver, GPUs, toolkit, Docker, a lab on a GPU."""
    from gpuhub.tasks import doctor as checks

    project = load()
    found = checks.run_checks(project.settings, tensorflow=tensorflow)
    print(checks.report_json(found) if json else checks.report_text(found))
    failed = sum(check.status == checks.FAIL for check in found)
    if failed:
        raise fail(f"{failed} check(s) failed; each FAIL line says its fix")
