"""An upgrade from the previous release to this checkout, live, as an admin does it.

The previous release (the commit CHANGELOG.md records for it) is checked out in a clone of
this repository, its own `invoke up` builds its images and brings its stack up, users work
on it (a CPU lab with files, a GPU lab, a GPU-hour record, one user in line, a token);
then the clone's files become this checkout's (tracked and new files, uncommitted edits
included) and the same settings file gets `invoke up`, which rebuilds the images and
migrates the hub database from JupyterHub 5.5 to this release's.

0.12.0 can only use SQLite (its hub image holds no PostgreSQL driver, so DATABASE_URL=
postgresql:// never worked there); test_hub_database_upgrade_on_postgresql.py makes the
same JupyterHub upgrade on PostgreSQL with this release at JUPYTERHUB_VERSION=5.5.4.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ROOT
from harness.hub import HubUser
from harness.stack import Stack
from harness.wait import wait_until

PASSWORDS = {name: f"{name}-pw-5a7c1e" for name in ("alice", "bob", "carol", "dave")}
IMAGES = {"HUB_IMAGE": "gpuhub-hub:upgrade", "LAB_IMAGE": "gpuhub-lab:upgrade",
          "DOCKER_PROXY_IMAGE": "gpuhub-docker-proxy:upgrade",
          "LAB_FIREWALL_IMAGE": "gpuhub-lab-firewall:upgrade"}
NOTE = "written on 0.12.0, before the upgrade\n"


def previous_release() -> tuple[str, str]:
    """(version, commit) of the release before this one, as CHANGELOG.md records it."""
    text = (ROOT / "CHANGELOG.md").read_text()
    found = re.findall(r"^## (\d+\.\d+\.\d+) \(commit ([0-9a-f]{7,40})", text, re.M)
    assert found, "CHANGELOG.md records no released commit (## X.Y.Z (commit ...))"
    return found[0]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout


def become_this_checkout(clone: Path) -> None:
    """The clone's files made this checkout's: HEAD, then every tracked or new (not
    ignored) file as it is in the working tree, as after `git pull` of these changes."""
    git(clone, "checkout", "-q", "--detach", git(ROOT, "rev-parse", "HEAD").strip())
    files = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for name in filter(None, files.split("\0")):
        source, target = ROOT / name, clone / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode & 0o777)
        elif not source.exists() and target.exists():
            target.unlink()  # deleted here, not yet committed


def known_settings(clone: Path) -> set[str]:
    """The setting names the checkout in ``clone`` accepts (older ones refuse new names)."""
    code = ("import sys; sys.path.insert(0, '.')\n"
            "try:\n    from gpuhub.core.settings import SETTINGS\n"
            "except ImportError:\n    from gpuhub.settings import SETTINGS\n"
            "print('\\n'.join(s.name for s in SETTINGS))")
    out = subprocess.run([sys.executable, "-c", code], cwd=clone, check=True,
                         capture_output=True, text=True).stdout
    return set(out.split())


def put_file(user: HubUser, path: str, text: str) -> None:
    answer = user.lab("PUT", f"/contents/{path}",
                      json={"type": "file", "format": "text", "content": text})
    assert answer.status_code in (200, 201), answer.text[:300]


def read_file(user: HubUser, path: str) -> str:
    answer = user.lab("GET", f"/contents/{path}?content=1&type=file&format=text")
    assert answer.status_code == 200, (user.lab_url(), answer.status_code,
                                       answer.headers.get("Location"), answer.text[:300])
    return answer.json()["content"]


def usage_by_user(stack: Stack) -> dict[str, tuple[str, str]]:
    """`invoke usage --csv`: each user's (labs, GPU-hours)."""
    rows = csv.DictReader(io.StringIO(stack.invoke("usage", "--csv").stdout))
    return {r["name"]: (r["labs"], r["gpu_hours"]) for r in rows if r["by"] == "user"}


@pytest.fixture(scope="module")
def released(tmp_path_factory, images):
    """A clone at the previous release, its stack up (its own images), users working."""
    version, commit = previous_release()
    folder = tmp_path_factory.mktemp("upgrade")
    clone = folder / "gpuhub"
    git(folder, "clone", "-q", str(ROOT), str(clone))
    git(clone, "checkout", "-q", commit)
    stack = Stack.create(folder / "settings", root=clone, **IMAGES, GPU_DEVICES="0",
                         GPU_QUEUE_TIMEOUT="600", IDLE_TIMEOUT="0")
    known = known_settings(clone)
    old_settings = {k: v for k, v in stack.settings.items() if k in known}
    dropped = sorted(set(stack.settings) - known)
    stack.settings = old_settings
    stack.write_env()
    try:
        started = time.monotonic()
        stack.up()
        old_up = time.monotonic() - started
        yield stack, clone, version, dropped, old_up
    finally:
        stack.teardown()


def test_an_upgrade_from_the_previous_release_keeps_users_labs_files_tokens_and_hours(
        released, measure):
    stack, clone, version, dropped, old_up = released
    measure(f"invoke up of {version} (its images built)", old_up)
    # 0.12.0's own `invoke adduser` (its user CLI lives elsewhere in its hub image).
    users = {name: stack.signed_up(name, pw) for name, pw in PASSWORDS.items()}
    alice, bob, carol, dave = (users[n] for n in ("alice", "bob", "carol", "dave"))
    token = alice.token
    # A CPU lab with a file in the work folder.
    alice.start_ready({"profile": "cpu"}, timeout=180, logs=stack.logs)
    put_file(alice, "work/notes.txt", NOTE)
    # GPU-hours on record: dave's GPU lab, run and stopped.
    dave.start_ready({"profile": "gpu1"}, timeout=180, logs=stack.logs)
    time.sleep(4)  # past 0.001 GPU-hours, the report's resolution
    dave.stop(logs=stack.logs)
    usage_before = usage_by_user(stack)
    assert usage_before["dave"][0] == "1" and float(usage_before["dave"][1]) > 0, usage_before
    # bob holds the one GPU (GPU_DEVICES=0); carol waits in line for it.
    bob.start_ready({"profile": "gpu1"}, timeout=180, logs=stack.logs)
    labs = {n: stack.inspect(stack.lab_container(n)) for n in ("alice", "bob")}
    assert carol.start({"profile": "gpu1"}).status_code == 202
    assert "in line" in carol.progress_messages("in line")[-1]

    become_this_checkout(clone)
    stack.settings.update({k: v for k, v in Stack.create(stack.workdir / "probe").settings.items()
                           if k in dropped})  # this release's own test settings (NVIDIA_CTK)
    stack.write_env()
    started = time.monotonic()
    result = stack.up()
    measure("upgrade: invoke up from 0.12.0 to the hub serving (images rebuilt)",
            time.monotonic() - started)

    # One line says what was done, and names the copy of the database as it was.
    said = [ln for ln in result.stdout.splitlines() if "upgraded the hub database" in ln]
    assert len(said) == 1 and "from JupyterHub 5.5.4" in said[0], result.stdout[-3000:]
    backup = Path(said[0].rsplit(" ", 1)[1])
    assert backup.parent == clone / "backups" and backup.name.endswith(
        "-jupyterhub-5.5.4-to-" + json.loads(stack.compose(
            "exec", "-T", "hub", "python3", "-c",
            "import json, jupyterhub; print(json.dumps(jupyterhub.__version__))").stdout)
        + ".sqlite"), backup
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    with sqlite3.connect(backup) as db:
        assert {r[0] for r in db.execute("SELECT name FROM users")} >= set(PASSWORDS)
        assert db.execute("SELECT version_num FROM alembic_version").fetchone() == (
            "4621fec11365",)

    # Every user logs in with their password; alice's old token still works.
    for name, password in PASSWORDS.items():
        HubUser(stack.url, name).login(password)  # a new browser session
    assert alice.api("GET", "/user", token=token).json()["name"] == "alice"
    # The labs that ran are the same containers, still running, reached through the hub.
    for name, before in labs.items():
        now = stack.inspect(stack.lab_container(name))
        assert now["Id"] == before["Id"] and now["State"]["Running"], name
    wait_until(lambda: alice.server().get("ready"), timeout=60, what="alice's lab reattached",
               state=alice.server, logs=stack.logs)
    old_address = alice.lab("GET", "/status")
    print("alice's lab at its 0.12.0 address after the upgrade:", old_address.status_code,
          old_address.headers.get("Location"))
    for user in (alice, bob):
        user.lab_base = None  # where the new hub says the lab is
    assert read_file(alice, "work/notes.txt") == NOTE
    assert labs["bob"]["Config"]["Labels"]["gpuhub.gpus"] == stack.inspect(
        stack.lab_container("bob"))["Config"]["Labels"]["gpuhub.gpus"]
    smi = bob.run_code("import subprocess\nprint(subprocess.run(['nvidia-smi', '-L'], "
                       "capture_output=True, text=True).stdout)")
    assert len([ln for ln in smi.splitlines() if ln.startswith("GPU ")]) == 1, smi
    board = json.loads(stack.invoke("gpus", "--json").stdout)
    assert "bob" in json.dumps(board), board
    # carol's wait ended with a message, not silently.
    wait_until(lambda: not carol.server(), timeout=60, what="carol's wait to have ended",
               state=carol.server, logs=stack.logs)
    carol_again = HubUser(stack.url, "carol")
    carol_again.login(PASSWORDS["carol"])
    home = carol_again.http.get(f"{stack.url}/hub/home", timeout=30).text
    assert "the hub restarted while you waited in line" in home, home[-1500:]
    # The usage report still has the hours recorded before.
    assert usage_by_user(stack)["dave"] == usage_before["dave"]
    # `invoke status` names the labs still on the old lab image.
    status = stack.invoke("status").stdout
    for name in ("alice", "bob"):
        row = next(ln for ln in status.splitlines() if ln.startswith(name + " "))
        assert row.endswith("old (new at next start)"), status
    # A lab started now runs the new image.
    alice.stop(logs=stack.logs)
    alice.start_ready({"profile": "cpu"}, timeout=180, logs=stack.logs)
    assert read_file(alice, "work/notes.txt") == NOTE
    row = next(ln for ln in stack.invoke("status").stdout.splitlines()
               if ln.startswith("alice "))
    assert row.endswith("current"), row
    for user in (alice, bob):
        user.stop(logs=stack.logs)
