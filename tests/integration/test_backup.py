"""Backup and restore through the real tasks: a round trip onto a new compose project."""

import gzip
import json
import stat
import tarfile
import time

import pytest

from harness.hub import HubUser

SPAWN_TIMEOUT = 180
FILE_TEXT = "kept across backup and restore"
PROBE_SECRET = "probe-secret-5b1e0c9a"
# A user deleted before the backup: `invoke deluser` keeps the work folder, so must backup.
GONE_USER, GONE_PASSWORD = "gwen", "gwen-pw-3e9d71"
GONE_TEXT = "written by gwen before her account was deleted"


def start_lab(url: str, name: str, password: str, logs) -> HubUser:
    user = HubUser.signed_in(url, name, password)
    user.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=logs)
    return user


@pytest.fixture(scope="module")
def archive(stack, users, tmp_path_factory, measure):
    """A backup (with work volumes) of the shared stack, after alice wrote a file."""
    alice = start_lab(stack.url, "alice", users["alice"], stack.logs)
    resp = alice.lab("PUT", "/contents/work/x.txt",
                     json={"type": "file", "format": "text", "content": FILE_TEXT})
    assert resp.status_code in (200, 201), resp.text
    alice.stop(logs=stack.logs)
    folder = tmp_path_factory.mktemp("backup")
    # The same project, through a settings file that also holds a secret-looking value.
    env_file = folder / "with-secret.env"
    env_file.write_text(stack.env_file.read_text() + f"GPUHUB_SMTP_PASSWORD={PROBE_SECRET}\n")
    out = folder / "hub.tar.gz"
    started = time.monotonic()
    result = stack.invoke("backup", "--with-work-volumes", "--output", str(out),
                          env={"GPUHUB_ENV_FILE": str(env_file)})
    measure("invoke backup --with-work-volumes", time.monotonic() - started)
    assert f"written to {out}" in result.stdout, result.stdout
    return out


def test_the_archive_is_private_and_holds_no_plain_secret(archive, users):
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json"
    assert {"hub/jupyterhub.sqlite", "settings.env", "profiles.yaml",
            "volumes/home-alice.tar"} <= set(names), names
    assert "hub/jupyterhub_cookie_secret" not in names, "secrets only with --include-secrets"
    raw = gzip.decompress(archive.read_bytes())
    for secret in [*users.values(), PROBE_SECRET]:
        assert secret.encode() not in raw, f"{secret!r} is in the archive"


def test_backup_refuses_postgresql(stack, tmp_path):
    env_file = tmp_path / "pg.env"
    url = "postgresql://hub:pg-pass-77@db:5432/hub"
    env_file.write_text(stack.env_file.read_text() + f"DATABASE_URL={url}\n")
    out = tmp_path / "pg.tar.gz"
    result = stack.invoke("backup", "--output", str(out), check=False,
                          env={"GPUHUB_ENV_FILE": str(env_file)})
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: ") and "pg_dump" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "pg-pass-77" not in result.stdout + result.stderr
    assert not out.exists()


def test_restore_onto_a_new_project_brings_users_and_files_back(
        archive, test_stacks, users, measure):
    target = test_stacks()
    started = time.monotonic()
    result = target.invoke("restore", str(archive))
    measure("invoke restore", time.monotonic() - started)
    assert "start it with `invoke up`" in result.stdout, result.stdout
    up = target.up("--no-build")
    assert "created admin" not in up.stdout, "the restored admin must not be re-created"
    assert "not created by Docker Compose" not in up.stderr, up.stderr

    alice = start_lab(target.url, "alice", users["alice"], target.logs)
    mounts = {m["Destination"]: m for m in target.inspect(target.lab_container("alice"))["Mounts"]}
    assert mounts["/home/jovyan/work"]["Name"] == f"{target.project}-home-alice"
    resp = alice.lab("GET", "/contents/work/x.txt")
    assert resp.status_code == 200, resp.text
    assert resp.json()["content"] == FILE_TEXT
    owner = alice.run_code("import os; print(os.stat('/home/jovyan/work/x.txt').st_uid == "
                           "os.getuid() == os.stat('/home/jovyan/work').st_uid)")
    assert owner.strip() == "True", "restored files must belong to the lab user"
    alice.stop(logs=target.logs)
    HubUser(target.url, "bob").login(users["bob"])

    # A project that is running, or merely has a database, is never overwritten.
    running = target.invoke("restore", str(archive), check=False)
    assert running.returncode != 0 and "is running" in running.stderr, running.stderr
    target.invoke("down")
    populated = target.invoke("restore", str(archive), check=False)
    assert populated.returncode != 0, populated.stdout
    assert "already has a hub database" in populated.stderr, populated.stderr
    assert len(populated.stderr.strip().splitlines()) == 1, populated.stderr


def test_include_secrets_keeps_sessions_valid(stack, users, test_stacks, tmp_path):
    alice = HubUser(stack.url, "alice")
    alice.login(users["alice"])
    out = tmp_path / "with-secrets.tar.gz"
    stack.invoke("backup", "--include-secrets", "--output", str(out))
    with tarfile.open(out, "r:gz") as tar:
        assert "hub/jupyterhub_cookie_secret" in tar.getnames()
    target = test_stacks()
    target.invoke("restore", str(out))
    target.up("--no-build")
    # The session cookie the old hub signed opens the restored hub's pages without a login.
    home = alice.http.get(f"{target.url}/hub/home", allow_redirects=False, timeout=30)
    assert home.status_code == 200, (home.status_code, home.headers.get("location"))
    stranger = HubUser(target.url, "alice")
    assert stranger.http.get(f"{target.url}/hub/home", allow_redirects=False,
                             timeout=30).status_code == 302


def test_a_deleted_users_work_folder_survives_backup_and_restore(stack, test_stacks, tmp_path):
    volume = f"{stack.project}-home-{GONE_USER}"
    stack.invoke("adduser", GONE_USER, "--password-stdin", stdin=GONE_PASSWORD + "\n")
    try:
        gwen = start_lab(stack.url, GONE_USER, GONE_PASSWORD, stack.logs)
        resp = gwen.lab("PUT", "/contents/work/notes.txt",
                        json={"type": "file", "format": "text", "content": GONE_TEXT})
        assert resp.status_code in (200, 201), resp.text
        gwen.stop(logs=stack.logs)
        deleted = stack.invoke("deluser", GONE_USER)
        assert "work folder kept" in deleted.stdout, deleted.stdout
        assert GONE_USER not in {u["name"] for u in stack.users()}
        assert stack.docker("volume", "inspect", volume, check=False).returncode == 0

        out = tmp_path / "after-deluser.tar.gz"
        backup = stack.invoke("backup", "--with-work-volumes", "--output", str(out))
        assert "of deleted users" in backup.stdout, backup.stdout
        with tarfile.open(out, "r:gz") as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
        assert {"user": None, "path": f"volumes/home-{GONE_USER}.tar",
                "volume": f"home-{GONE_USER}"} in manifest["volumes"], manifest["volumes"]
        assert GONE_USER not in {u["name"] for u in manifest["users"]}
    finally:
        stack.invoke("deluser", GONE_USER, check=False)
        stack.docker("volume", "rm", "-f", volume, check=False)

    target = test_stacks()
    restored = target.invoke("restore", str(out))
    assert (f"restoring the work folder of a deleted user into {target.project}-home-{GONE_USER}"
            in restored.stdout), restored.stdout
    target.up("--no-build")
    # gwen comes back under her old name: her work folder is there again (handed to the
    # account knowingly: adduser refuses a name whose kept folder exists without it).
    target.invoke("adduser", GONE_USER, "--reuse-data", "--password-stdin",
                  stdin=GONE_PASSWORD + "\n")
    gwen = start_lab(target.url, GONE_USER, GONE_PASSWORD, target.logs)
    mounts = {m["Destination"]: m
              for m in target.inspect(target.lab_container(GONE_USER))["Mounts"]}
    assert mounts["/home/jovyan/work"]["Name"] == f"{target.project}-home-{GONE_USER}"
    resp = gwen.lab("GET", "/contents/work/notes.txt")
    assert resp.status_code == 200, resp.text
    assert resp.json()["content"] == GONE_TEXT
    gwen.stop(logs=target.logs)
