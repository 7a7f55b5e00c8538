"""Disk a lab can fill, on a real stack: work folders under a quota (WORK_QUOTA on btrfs) and
/tmp in a capped tmpfs (LAB_TMP_SIZE).

The test makes its own btrfs filesystem (a loop-mounted image file, quotas on) as WORK_ROOT.
The attacker is a user with a kernel in their own lab who writes as much as they can; the
facts are read where the kernel and Docker record them: the errno the lab's write got, the
quota group btrfs keeps on the host, the volume Docker binds, and that another user logs in
and starts a lab meanwhile. Needs root (mount) and btrfs-progs, as CI has.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.hub import HubUser
from harness.wait import wait_until

SPAWN_TIMEOUT = 180
QUOTA = "64M"
QUOTA_BYTES = 64 * 1024 ** 2
TMP = "32M"
PROFILES = "- {display_name: CPU only, slug: cpu, gpus: 0}\n"
# Writes 1 MiB blocks until the filesystem refuses; prints the errno's name and the bytes
# that were written (fsync'd, so btrfs accounts them at once).
FILL = """
import errno, os
path, written = {path!r}, 0
try:
    with open(path, "wb") as f:
        for _ in range({blocks}):
            f.write(b"\\x01" * 1024 * 1024)
            f.flush()
            os.fsync(f.fileno())
            written += 1024 * 1024
    print("NO-ERROR", written)
except OSError as err:
    print(errno.errorcode[err.errno], written)
"""


def _btrfs(*args: str) -> str:
    return subprocess.run(["btrfs", *args], check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def loop_btrfs(base: Path, size: int):
    """A btrfs filesystem in a sparse file of ``size`` bytes, mounted at ``base``/fs."""
    image, mounted = base / "fs.img", base / "fs"
    mounted.mkdir()
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.btrfs", "-q", "-f", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mounted)], check=True)
    try:
        yield mounted
    finally:
        if subprocess.run(["umount", str(mounted)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mounted)], check=False)
        image.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def work_root(tmp_path_factory):
    """A btrfs filesystem with quotas on, mounted for this module only."""
    if os.geteuid() != 0 or not shutil.which("mkfs.btrfs"):
        pytest.skip("needs root and btrfs-progs (a loop-mounted btrfs): CI has both")
    with loop_btrfs(tmp_path_factory.mktemp("btrfs"), 512 * 1024 ** 2) as root:
        _btrfs("quota", "enable", str(root))
        yield root


@pytest.fixture(scope="module")
def quota_stack(work_root, stack_factory, tmp_path_factory):
    """WORK_QUOTA=64M in the module's btrfs, and a 32M /tmp per lab."""
    profiles = tmp_path_factory.mktemp("quota") / "profiles.yaml"
    profiles.write_text(PROFILES)
    stack = stack_factory(WORK_QUOTA=QUOTA, WORK_ROOT=str(work_root), LAB_TMP_SIZE=TMP,
                          PROFILES_FILE=str(profiles))
    result = stack.up("--no-build")
    assert f"work folders: at most {QUOTA} each, in {work_root}" in result.stdout, result.stdout
    return stack


def _running(stack, user: HubUser) -> HubUser:
    if not user.server().get("ready"):
        user.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    return user


def _quota_group(path: Path) -> tuple[int, int]:
    """(referenced bytes, max referenced) of the subvolume at ``path``, as btrfs keeps them."""
    ident = _btrfs("inspect-internal", "rootid", str(path)).strip()
    _btrfs("filesystem", "sync", str(path))
    for line in _btrfs("qgroup", "show", "--raw", "-re", "--sync", str(path)).splitlines()[2:]:
        fields = line.split()
        if fields and fields[0] == f"0/{ident}":
            return int(fields[1]), (0 if fields[3] == "none" else int(fields[3]))
    raise AssertionError(f"no quota group 0/{ident} for {path}")


def test_a_lab_that_writes_past_its_quota_gets_disk_quota_exceeded_alone(quota_stack, work_root):
    """alice fills her work folder from her own kernel: the filesystem stops her at the
    quota with EDQUOT, btrfs recorded the limit on her subvolume, and meanwhile bob logs in
    and starts a lab. The hub shows alice the one line, and the admin her use."""
    stack = quota_stack
    alice = _running(stack, stack.signed_up("alice"))
    volume = stack.docker("volume", "inspect", f"{stack.project}-home-alice").stdout
    options = json.loads(volume)[0]["Options"]
    assert options == {"type": "none", "o": "bind", "device": str(work_root / "alice")}, volume
    out = alice.run_code(FILL.format(path="/home/jovyan/work/fill.bin", blocks=128), timeout=180)
    name, written = out.split()
    assert name == "EDQUOT", f"the write past the quota did not fail with EDQUOT: {out}"
    assert 0 < int(written) <= QUOTA_BYTES, out
    used, limit = _quota_group(work_root / "alice")
    assert limit == QUOTA_BYTES and used <= QUOTA_BYTES, (used, limit)
    # The block that failed may have been written in part: the file holds at least what
    # the lab was told was written, and never more than the quota.
    assert int(written) <= (work_root / "alice" / "fill.bin").stat().st_size <= QUOTA_BYTES

    # Another user logs in and starts while alice's folder is full.
    bob = _running(stack, stack.signed_up("bob"))
    assert bob.run_code("print(open('/home/jovyan/work/x', 'w').write('ok'))").strip() == "2"

    # What the admin and alice see: `invoke users`, the metric, the line on her hub page.
    rows = {r["name"]: r for r in stack.users()}
    assert rows["alice"]["work_folder"]["limit"] == QUOTA_BYTES, rows["alice"]
    assert rows["alice"]["work_folder"]["used"] >= QUOTA_BYTES * 0.9, rows["alice"]
    table = stack.invoke("users").stdout
    assert "WORK FOLDER" in table and "of 64.0 MiB" in table, table

    def note():
        page = alice.http.get(f"{alice.base}/hub/home", verify=alice.verify)
        return "Your work folder is full" in page.text and page.text
    text = wait_until(note, timeout=90, interval=3, what="the full-folder line on alice's page")
    assert "of 64.0 MiB" in text
    # The admin's page of work folders, fullest first: alice at the top, full.
    admin = HubUser.signed_in(stack.url, "admin", stack.admin_passwords["admin"])
    page = admin.http.get(f"{stack.url}/hub/work-folders?format=json", verify=admin.verify)
    assert page.status_code == 200, page.text
    top = page.json()["folders"][0]
    assert (top["user"], top["limit"], top["full"]) == ("alice", QUOTA_BYTES, True), page.json()
    assert alice.http.get(f"{stack.url}/hub/work-folders", verify=alice.verify).status_code == 403
    alice.stop(logs=stack.logs)
    bob.stop(logs=stack.logs)


def test_a_lab_that_fills_tmp_stops_at_its_size_in_memory(quota_stack):
    """/tmp is a tmpfs of LAB_TMP_SIZE (Docker records it): a write past it fails with ENOSPC
    and nothing reached Docker's disk."""
    stack = quota_stack
    carol = _running(stack, stack.signed_up("carol"))
    info = stack.inspect(stack.lab_container("carol"))
    assert info["HostConfig"]["Tmpfs"] == {
        "/tmp": f"rw,nosuid,nodev,size={32 * 1024 ** 2},mode=1777"}, info["HostConfig"]
    out = carol.run_code(FILL.format(path="/tmp/fill.bin", blocks=64), timeout=120)
    name, written = out.split()
    assert name == "ENOSPC" and int(written) <= 32 * 1024 ** 2, out
    carol.stop(logs=stack.logs)


def _with_kept_files(stack, name: str) -> HubUser:
    """A new account given the work volume already there (`invoke adduser --reuse-data`)."""
    password = f"{name}-pw-12345"
    stack.invoke("adduser", name, "--reuse-data", "--password-stdin", stdin=password + "\n")
    return HubUser.signed_in(stack.url, name, password)


def test_a_plain_work_volume_is_moved_under_the_quota_at_the_next_start(quota_stack, work_root):
    """A work volume from before WORK_QUOTA (or from `invoke restore`): its files move into
    the user's subvolume at the next start; one too big for the quota stays where it was, and
    the start is refused with the sizes and the fix."""
    stack = quota_stack
    for user, megabytes in (("dave", 1), ("erin", 96)):
        stack.docker("volume", "create", f"{stack.project}-home-{user}")
        # As `invoke restore` leaves it: files of the lab's user, in a plain volume.
        stack.docker("run", "--rm", "--user", "0", "-v", f"{stack.project}-home-{user}:/v",
                     "--entrypoint", "sh", "gpuhub-lab:test", "-c",
                     f"head -c {megabytes}M /dev/zero > /v/data.bin && echo kept > /v/note.txt"
                     " && chown -R 1000:100 /v")
    dave = _running(stack, _with_kept_files(stack, "dave"))
    assert dave.run_code("print(open('/home/jovyan/work/note.txt').read())").strip() == "kept"
    assert (work_root / "dave" / "note.txt").read_text() == "kept\n"
    assert _quota_group(work_root / "dave")[1] == QUOTA_BYTES

    erin = _with_kept_files(stack, "erin")
    answer = erin.start({"profile": "cpu"})
    # The copy may outlast the hub's wait before it answers 202: then the progress says it.
    assert answer.status_code in (202, 507), answer.text
    said = (answer.json()["message"] if answer.status_code == 507
            else erin.progress_messages(until="\0", timeout=120)[-1])
    # One line for erin; the sizes, the host's paths and the fix are in the logs, below.
    assert "your work folder could not be put under its size limit" in said, said
    assert "your files are kept" in said and str(work_root) not in said, said

    def failed():
        server = erin.model().get("servers", {}).get("")
        return not server and erin.model()
    wait_until(failed, timeout=120, interval=2, what="erin's start to fail")
    logs = stack.logs(tail=400, service="hub") + stack.logs(tail=400, service="docker-proxy")
    assert "larger than WORK_QUOTA" in logs, logs[-3000:]
    kept = stack.docker("run", "--rm", "-v", f"{stack.project}-home-erin:/v:ro", "--entrypoint",
                        "sh", "gpuhub-lab:test", "-c", "cat /v/note.txt; wc -c < /v/data.bin")
    assert kept.stdout.split() == ["kept", str(96 * 1024 ** 2)], kept.stdout
    dave.stop(logs=stack.logs)


def test_deleting_a_user_with_purge_removes_their_quota_folder(quota_stack, work_root):
    stack = quota_stack
    frank = _running(stack, stack.signed_up("frank"))
    frank.stop(logs=stack.logs)
    assert (work_root / "frank").is_dir()
    stack.invoke("deluser", "frank", "--purge-data")
    assert not (work_root / "frank").exists()
    assert stack.docker("volume", "inspect", f"{stack.project}-home-frank",
                        check=False).returncode != 0


def test_up_refuses_a_work_root_that_cannot_keep_a_quota(stack_factory, tmp_path):
    """A folder on Docker's own disk (not btrfs): `invoke up` says so in one line, and
    what to do, before it starts anything."""
    stack = stack_factory(WORK_QUOTA=QUOTA, WORK_ROOT=str(tmp_path))
    result = stack.invoke("up", "--no-build", check=False)
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert f"cannot be kept in WORK_ROOT={tmp_path}" in line and "not btrfs" in line, result.stderr
    assert "btrfs quota enable" in line


# --- the writable layer (LAB_DISK_LIMIT) ------------------------------------------------------
# This machine's Docker stores layers with overlay2 on ext4, which cannot bound them; Docker's
# btrfs storage can. The test starts a second engine of its own (no network of its own, no
# iptables) on a btrfs filesystem it made, and runs `invoke up`'s check against both.

DISK_IMAGE = "gpuhub-standin/debian:bookworm"  # small, and has dd
# btrfs storage counts the image's own files in the limit (about 120 MiB here).
DISK_LIMIT = "320M"
DISK_LIMIT_BYTES = 320 * 1024 ** 2


def _project(tmp_path, **settings):
    from gpuhub.tasks.project import load

    env = tmp_path / "disk.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in {"COMPOSE_PROJECT_NAME": "gpuhubdisk",
                                                     "LAB_IMAGE": DISK_IMAGE,
                                                     **settings}.items()))
    return load(environ={"GPUHUB_ENV_FILE": str(env)})


def _context(docker_host: str | None = None):
    from invoke import Config, Context

    env = {"DOCKER_HOST": docker_host} if docker_host else {}
    return Context(Config(overrides={"run": {"in_stream": False, "env": env}}))


@pytest.fixture(scope="module")
def btrfs_engine(tmp_path_factory):
    """A second Docker engine whose storage is btrfs, on a socket of its own."""
    if os.geteuid() != 0 or not all(map(shutil.which, ("mkfs.btrfs", "dockerd", "unshare"))):
        pytest.skip("needs root, btrfs-progs, dockerd and unshare: CI has them")
    base = tmp_path_factory.mktemp("engine")
    with loop_btrfs(base, 2 * 1024 ** 3) as data:
        yield from _engine(base, data)


def _engine(base: Path, data: Path):
    run_dir = Path("/run/gpuhub-test-engine")  # short: unix socket paths have a limit
    run_dir.mkdir(exist_ok=True)
    socket = run_dir / "docker.sock"
    host = f"unix://{socket}"
    log = open(base / "dockerd.log", "wb")
    # In a network namespace of its own: a daemon without a bridge removes the host's
    # docker0 at start (moby: removeDefaultBridgeInterface), which the main engine needs.
    engine = subprocess.Popen(
        ["unshare", "--net", "--", "dockerd", "--data-root", str(data / "docker"),
         "--exec-root", str(run_dir / "exec"), "--host", host, "--pidfile", str(run_dir / "docker.pid"), "--storage-driver", "btrfs",
         "--bridge", "none", "--iptables=false", "--ip-masq=false"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: subprocess.run(["docker", "-H", host, "version"],
                                          capture_output=True).returncode == 0,
                   timeout=60, what="the btrfs engine to answer",
                   state=lambda: (base / "dockerd.log").read_text()[-2000:])
        saved = subprocess.Popen(["docker", "save", DISK_IMAGE], stdout=subprocess.PIPE)
        subprocess.run(["docker", "-H", host, "load", "-q"], stdin=saved.stdout, check=True,
                       capture_output=True)
        saved.wait()
        yield host
    finally:
        engine.terminate()
        try:
            engine.wait(30)
        except subprocess.TimeoutExpired:
            engine.kill()
        log.close()


def test_up_bounds_a_labs_writable_layer_where_dockers_storage_can(btrfs_engine, tmp_path):
    """`invoke up`'s check, against two real engines: overlay2 on ext4 cannot bound a
    writable layer (auto: none and a note; a size: refused), btrfs storage can (the limit
    goes to the hub and the broker). A container made with the limit the broker gives every
    lab cannot write past it, in the kernel's own words."""
    from invoke.exceptions import Exit

    from gpuhub.core.lablimits import DISK_LIMIT_ENV
    from gpuhub.tasks import composestack

    here = composestack.lab_disk_env(_context(), _project(tmp_path))
    assert here == {}, "overlay2 on ext4 bounded a writable layer?"
    with pytest.raises(Exit, match="LAB_DISK_LIMIT=320M cannot be kept.*overlay over xfs"):
        composestack.lab_disk_env(_context(), _project(tmp_path, LAB_DISK_LIMIT=DISK_LIMIT))

    found = composestack.lab_disk_env(_context(btrfs_engine),
                                      _project(tmp_path, LAB_DISK_LIMIT=DISK_LIMIT))
    assert found == {DISK_LIMIT_ENV: str(DISK_LIMIT_BYTES)}
    # A limit below the image's own size is refused by `invoke up`, not at each lab's start.
    with pytest.raises(Exit, match="LAB_DISK_LIMIT=64M cannot be kept.*quota"):
        composestack.lab_disk_env(_context(btrfs_engine),
                                  _project(tmp_path, LAB_DISK_LIMIT="64M"))
    # The broker's StorageOpt (lablimits.storage_opt) for that limit, on the btrfs engine.
    from gpuhub.core.lablimits import storage_opt

    option = "size=" + storage_opt(int(found[DISK_LIMIT_ENV]))["size"]
    wrote = subprocess.run(
        ["docker", "-H", btrfs_engine, "run", "--rm", "--network", "none", "--storage-opt",
         option, DISK_IMAGE, "sh", "-c",
         "dd if=/dev/zero of=/fill bs=1M count=512 conv=fsync 2>&1; echo exit=$?"],
        capture_output=True, text=True, timeout=120)
    assert "exit=1" in wrote.stdout, wrote
    assert "Disk quota exceeded" in wrote.stdout or "No space left" in wrote.stdout, wrote.stdout
