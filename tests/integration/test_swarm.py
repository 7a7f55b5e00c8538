"""Swarm mode on a real three-engine Swarm (tests/support/swarm_cluster.py).

n1 is the manager and runs the hub; n2 and n3 are workers with two fake GPUs each
(the NVIDIA test double as their default runtime). Images go through a real registry.
Run by `nox -s swarm` (root needed: namespaces and extra Docker engines).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time

import pytest

from gpuhub.core import names
from harness.hub import HubUser
from harness.stack import Stack, free_port
from harness.wait import WaitTimeout, wait_until
from support import directory, login_stack
from support.loginform import LoginForm
from support.swarm_cluster import RESOURCE, SwarmCluster

pytestmark = pytest.mark.swarm

PASSWORD = "swarm-test-pw-5d1c"
# The shipped profiles plus one that only a node labelled pool=n3 may run.
PROFILES = """\
- {display_name: CPU only, slug: cpu, gpus: 0}
- {display_name: 1 GPU, slug: gpu1, gpus: 1, default: true}
- {display_name: 2 GPUs, slug: gpu2, gpus: 2}
- {display_name: 1 GPU on the n3 pool, slug: gpu1-n3, gpus: 1,
   placement: ["node.labels.pool == n3"]}
"""
USERS = ("alice", "bob", "carol", "dave", "erin")
# A lab base for this tier only (CI: the stand-in without TensorFlow, tests/standins): the
# lab image goes through the registry to every node, and no lab here imports TensorFlow.
# Unset: the lab base every other test stack builds from.
SWARM_LAB_BASE_ENV = "GPUHUB_SWARM_LAB_BASE_IMAGE"
TOOLS = ("ip", "nsenter", "unshare", "socat", "docker-registry", "dockerd")


class SwarmStack:
    """The gpuhub stack deployed on the cluster, driven by the real tasks."""

    def __init__(self, cluster: SwarmCluster, stack: Stack):
        self.cluster = cluster
        self.stack = stack
        self.url = ""

    def invoke(self, *args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
        """A task run on the manager (DOCKER_HOST points at its engine)."""
        return self.stack.invoke(*args, env={"DOCKER_HOST": self.cluster.manager.host,
                                             **(env or {})}, **kw)

    def service(self, user: str) -> str:
        return f"{self.stack.project}-lab-{user}"

    def tasks(self, user: str, running: bool = True) -> list[dict]:
        m = self.cluster.manager
        args = ["service", "ps", "-q", self.service(user)]
        if running:
            args[3:3] = ["--filter", "desired-state=running"]
        ids = m.docker(*args, check=False).stdout.split()
        return json.loads(m.docker("inspect", *ids).stdout) if ids else []

    def running_on_nodes(self, service: str) -> int:
        out = self.cluster.manager.docker("service", "ps", "--filter", "desired-state=running",
                                          "--format", "{{.Node}} {{.CurrentState}}", service,
                                          check=False).stdout
        return len({line.split()[0] for line in out.splitlines() if " Running " in f" {line} "})

    def running_task(self, user: str) -> dict:
        tasks = [t for t in self.tasks(user) if t["Status"]["State"] == "running"]
        assert len(tasks) == 1, f"{user}: expected one running task, got {tasks}"
        return tasks[0]

    def gpus_of(self, task: dict) -> list[str]:
        given = task.get("AssignedGenericResources") or task.get("GenericResources") or []
        return [r["NamedResourceSpec"]["Value"] for r in given]

    def in_lab(self, user: str, *cmd: str) -> str:
        task = self.running_task(user)
        node = self.cluster.node_of(task["NodeID"])
        cid = task["Status"]["ContainerStatus"]["ContainerID"]
        return node.docker("exec", cid, *cmd).stdout

    def logs(self) -> str:
        """The hub's last log lines, without its answers to the tests' polls (200 GET)."""
        out = self.cluster.manager.docker("service", "logs", "--tail", "600",
                                          f"{self.stack.project}_hub", check=False)
        lines = [ln for ln in (out.stdout + out.stderr).splitlines() if " 200 GET " not in ln]
        return "\n".join(lines)[-12000:]

    def spawn(self, user: HubUser, profile: str) -> float:
        started = time.monotonic()
        answer = user.start({"profile": profile})
        assert answer.status_code in (201, 202), f"{answer.status_code} {answer.text}"
        try:
            user.wait_ready(60)
        except WaitTimeout:  # what the network looks like while the hub still tries
            seen = self.lab_reachability(user.name)
            user.wait_ready(180, logs=lambda: self.logs() + "\n" + seen)
        return time.monotonic() - started

    def toolkit_evidence(self, user: str) -> str:
        """For a lab that started although its node models toolkit 1.18: each node's
        toolkit setting and the double's last lines, and what the lab's tasks were given."""
        parts = []
        for node in self.cluster.nodes:
            env = node.root / "toolkit.env"
            log = node.root / "gpu-double.log"
            parts.append(f"{node.name}: toolkit.env "
                         f"{env.read_text().strip() if env.exists() else '(none)'}; "
                         f"double log: {log.read_text()[-1500:] if log.exists() else '(none)'}")
        for task in self.tasks(user, running=False):
            spec = task["Spec"]["ContainerSpec"]
            parts.append(f"task {task['ID'][:12]} {task['Status']['State']} on "
                         f"{self.cluster.node_of(task['NodeID']).name}, given "
                         f"{self.gpus_of(task)}, env "
                         f"{[e for e in spec.get('Env', []) if 'NVIDIA' in e or 'RESOURCE' in e]}")
        return "\n".join(parts) + "\n" + self.lab_logs(user) + "\n" + self.logs()[-4000:]

    def lab_logs(self, user: str) -> str:
        out = self.cluster.manager.docker("service", "logs", "--tail", "30", self.service(user),
                                          check=False)
        return (out.stdout + out.stderr)[-5000:]

    def lab_reachability(self, user: str) -> str:
        """For a lab the hub cannot reach: where Swarm put its tasks (and their addresses),
        what the lab's name resolves to in the hub, and whether the hub connects there."""
        m = self.cluster.manager
        service = self.service(user)
        parts = [m.docker("service", "ps", "--no-trunc", service, check=False).stdout]
        for task in self.tasks(user, running=False):
            addresses = [a for n in task.get("NetworksAttachments") or [] for a in n["Addresses"]]
            parts.append(f"task {task['ID'][:12]} {task['Status']['State']} on "
                         f"{self.cluster.node_of(task['NodeID']).name}: {addresses}")
        hub = m.docker("ps", "-q", "--filter",
                       f"label=com.docker.swarm.service.name={self.stack.project}_hub",
                       check=False).stdout.split()
        for task in self.tasks(user):
            node = self.cluster.node_of(task["NodeID"])
            cid = task["Status"].get("ContainerStatus", {}).get("ContainerID", "")
            if cid:
                macs = node.docker("inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}"
                                   "{{$k}}={{$v.IPAddress}}/{{$v.MacAddress}} {{end}}", cid,
                                   check=False).stdout.strip()
                parts.append(f"lab container on {node.name}: {macs}")
                parts.append(node.docker("logs", "--tail", "15", cid, check=False).stderr[-1500:])
        if hub:
            pid = m.docker("inspect", "-f", "{{.State.Pid}}", hub[0], check=False).stdout.strip()
            neigh = subprocess.run(["nsenter", "-t", pid, "-n", "ip", "neigh", "show"],
                                   capture_output=True, text=True)
            parts.append(f"the hub's neighbours: {neigh.stdout.strip()} {neigh.stderr.strip()}")
            probe = ("import socket, sys\n"
                     "for ip in sorted({a[4][0] for a in socket.getaddrinfo(sys.argv[1], 8888)}):\n"
                     "    try:\n"
                     "        socket.create_connection((ip, 8888), 3).close(); print(ip, 'connects')\n"
                     "    except OSError as e:\n"
                     "        print(ip, e)\n")
            out = m.docker("exec", hub[0], "python3", "-c", probe, service, check=False)
            parts.append(f"from the hub: {out.stdout.strip()} {out.stderr.strip()[-300:]}")
        return "\n".join(parts)


@pytest.fixture(scope="module")
def swarm(images, tmp_path_factory, measure):
    if os.geteuid() != 0:
        pytest.fail("the Swarm test needs root (network namespaces, extra Docker engines)")
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        pytest.fail(f"the Swarm test needs {', '.join(missing)}: run .ci/provision")
    cluster = SwarmCluster(tmp_path_factory.mktemp("swarm"))
    pushed: list[str] = []
    try:
        started = time.monotonic()
        cluster.start()
        measure("swarm: 3 engines up and joined", time.monotonic() - started)
        # Own tags (the build is cached): nothing else on this engine retags them.
        tag = f"swarm-{cluster.id}"
        workdir = tmp_path_factory.mktemp("swarm-stack")
        # The same port here (relayed) as on the manager: the labs' origins
        # (<user>.localhost:HUB_PORT) name it.
        port = free_port()
        (workdir / "profiles.yaml").write_text(PROFILES)
        lab_base = os.environ.get(SWARM_LAB_BASE_ENV)
        stack = Stack.create(workdir, MODE="swarm", PROFILES_FILE=str(workdir / "profiles.yaml"),
                             **({"LAB_BASE_IMAGE": lab_base} if lab_base else {}),
                             HUB_IMAGE=f"gpuhub-hub:{tag}", LAB_IMAGE=f"gpuhub-lab:{tag}",
                             REGISTRY=cluster.registry, SWARM_HOMES=str(cluster.homes),
                             DOCKER_SOCKET=str(cluster.manager.socket),
                             HUB_BIND_ADDRESS="0.0.0.0", HUB_PORT=str(port), SPAWN_TIMEOUT="240")
        s = SwarmStack(cluster, stack)
        started = time.monotonic()
        # On this machine's engine (cached; the lab's first build on its own base), then pushed.
        stack.invoke("build", "--push")
        pushed = [f"{registry}{stack.settings[k]}" for k in ("HUB_IMAGE", "LAB_IMAGE")
                  for registry in ("", f"{cluster.registry}/")]
        measure("swarm: invoke build --push", time.monotonic() - started)
        started = time.monotonic()
        result = s.invoke("up", "--no-build")
        measure("swarm: invoke up --no-build", time.monotonic() - started)
        assert "gpuhub is up on the Swarm" in result.stdout, result.stdout
        # The labs-network keeper runs the lab image on every node: once it runs
        # everywhere, every node has the image, and spawn timings exclude the pull.
        keeper = f"{stack.project}_labs-network"
        wait_until(lambda: s.running_on_nodes(keeper) == len(cluster.nodes), timeout=600,
                   interval=2, what="the labs-network keeper running on every node",
                   state=lambda: cluster.manager.docker("service", "ps", keeper,
                                                        check=False).stdout)
        measure("swarm: lab image on every node (after up)", time.monotonic() - started)
        # Labels first: on a node that runs GPU labs, a label change would stop them.
        s.invoke("node-add", "--node", cluster.nodes[2].name, "--label", "pool=n3")
        s.url = f"http://localhost:{cluster.relay_to_manager(port, local=port)}"
        for name in USERS:
            s.invoke("adduser", name, "--password-stdin", stdin=PASSWORD + "\n")
        yield s
    finally:
        cluster.teardown()
        for image in pushed:
            subprocess.run(["docker", "rmi", image], capture_output=True)
    left = cluster.leftovers()
    assert not left, f"the Swarm test cluster left behind: {left}"


@pytest.fixture(scope="module")
def sessions(swarm):
    return {name: HubUser.signed_in(swarm.url, name, PASSWORD) for name in USERS}


def test_gpu_labs_land_on_different_nodes_with_their_own_gpus(swarm, sessions, measure):
    alice, bob = sessions["alice"], sessions["bob"]
    measure("swarm: spawn gpu1 (alice, image present)", swarm.spawn(alice, "gpu1"))
    measure("swarm: spawn gpu1 (bob, image present)", swarm.spawn(bob, "gpu1"))
    ta, tb = swarm.running_task("alice"), swarm.running_task("bob")
    na, nb = swarm.cluster.node_of(ta["NodeID"]), swarm.cluster.node_of(tb["NodeID"])
    assert na.name != nb.name, f"both labs on {na.name}: Swarm should spread them"
    for user, task, node in (("alice", ta, na), ("bob", tb, nb)):
        granted = swarm.gpus_of(task)
        assert len(granted) == 1 and granted[0] in {g["uuid"] for g in node.gpus}, (
            f"{user} on {node.name} got {granted}; node has {node.gpus}")
        # What the lab sees (fake nvidia-smi, fed by the runtime from Swarm's grant).
        assert swarm.in_lab(user, "nvidia-smi", "-L").count("UUID: ") == 1
        assert granted[0] in swarm.in_lab(user, "nvidia-smi", "-L")
        assert swarm.in_lab(user, "id", "-u").strip() != "0"
        # The lab answers through the proxy: hub (n1) to lab (n2/n3) over the overlay.
        resp = sessions[user].lab("GET", "/status")
        assert resp.status_code == 200, resp.text
    assert swarm.gpus_of(ta) != swarm.gpus_of(tb)
    rows = json.loads(swarm.invoke("gpus", "--json").stdout)
    held = {r["uuid"]: r["held_by"] for r in rows}
    assert held[swarm.gpus_of(ta)[0]] == ["alice"] and held[swarm.gpus_of(tb)[0]] == ["bob"]


def test_lab_services_are_hardened(swarm, sessions):
    spec = json.loads(swarm.cluster.manager.docker(
        "service", "inspect", swarm.service("alice")).stdout)[0]["Spec"]
    container = spec["TaskTemplate"]["ContainerSpec"]
    assert container.get("CapabilityDrop") == ["ALL"], container
    assert spec["TaskTemplate"]["Resources"]["Limits"]["Pids"] == 1024
    assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
    mounts = container.get("Mounts", [])
    sources = [m["Source"] for m in mounts if m["Type"] == "bind"]
    assert sources == [f"{swarm.stack.settings['SWARM_HOMES']}/alice"], mounts
    # /tmp in memory, capped (LAB_TMP_SIZE, default 1G), on whichever node runs the lab
    tmp = [m for m in mounts if m["Type"] == "tmpfs"]
    assert [(m["Target"], m["TmpfsOptions"]["SizeBytes"]) for m in tmp] == [
        ("/tmp", 1024 ** 3)], mounts
    env = dict(e.split("=", 1) for e in container["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"  # Swarm's grant decides, never "all"
    assert "docker.sock" not in json.dumps(container)


def test_no_free_gpu_is_refused_at_once_and_cpu_labs_still_start(swarm, sessions, measure):
    swarm.spawn(sessions["carol"], "gpu1-n3")  # placement: only the node labelled pool=n3
    assert swarm.cluster.node_of(swarm.running_task("carol")["NodeID"]) == swarm.cluster.nodes[2]
    swarm.spawn(sessions["dave"], "gpu1")  # now all four GPUs are held
    erin = sessions["erin"]
    started = time.monotonic()
    resp = erin.start({"profile": "gpu1"})
    waited = time.monotonic() - started
    assert resp.status_code == 409, f"{resp.status_code} {resp.text}"
    assert "no node has 1 free GPU" in resp.json()["message"], resp.text
    assert waited < 15, f"the refusal took {waited:.1f}s"
    wait_until(lambda: not swarm.tasks("erin", running=False), timeout=30,
               what="erin's refused service removed", state=lambda: swarm.tasks("erin"))
    measure("swarm: spawn cpu (erin, image present)", swarm.spawn(erin, "cpu"))
    assert swarm.gpus_of(swarm.running_task("erin")) == []
    assert "No devices" in swarm.in_lab("erin", "sh", "-c", "nvidia-smi -L 2>&1 || echo No devices")


def test_draining_a_node_stops_its_labs_and_keeps_their_files(swarm, sessions):
    alice = sessions["alice"]
    put = alice.lab("PUT", "/contents/work/notes.txt",
                    json={"type": "file", "format": "text", "content": "kept across nodes"})
    assert put.status_code in (200, 201), put.text
    drained = swarm.cluster.node_of(swarm.running_task("alice")["NodeID"])
    on_drained = [u for u in USERS if swarm.tasks(u)
                  and swarm.cluster.node_of(swarm.running_task(u)["NodeID"]) == drained]
    elsewhere = {u: swarm.running_task(u)["ID"] for u in USERS
                 if swarm.tasks(u) and u not in on_drained}
    # Free one GPU on a node that stays: the one alice will move to.
    freed = next(u for u in ("carol", "dave") if u in elsewhere)
    sessions[freed].stop(logs=swarm.logs)
    del elsewhere[freed]
    swarm.cluster.manager.docker("node", "update", "--availability", "drain", drained.name)
    try:
        for user in on_drained:  # the hub's poll (10 s) notices; the lab is stopped
            wait_until(lambda u=user: not sessions[u].server(), timeout=60,
                       what=f"{user}'s lab reported stopped after the drain",
                       state=sessions[user].server, logs=swarm.logs)
        for user, task_id in elsewhere.items():  # labs on other nodes are untouched
            assert sessions[user].server().get("ready"), user
            assert swarm.running_task(user)["ID"] == task_id
        swarm.spawn(alice, "gpu1")
        moved = swarm.cluster.node_of(swarm.running_task("alice")["NodeID"])
        assert moved != drained
        got = alice.lab("GET", "/contents/work/notes.txt")
        assert got.status_code == 200 and got.json()["content"] == "kept across nodes", got.text
    finally:
        swarm.cluster.manager.docker("node", "update", "--availability", "active", drained.name)


def test_hub_restart_keeps_the_labs(swarm, sessions):
    before = {u: swarm.running_task(u)["ID"] for u in USERS if swarm.tasks(u)}
    swarm.invoke("restart")
    for user, task_id in before.items():
        assert swarm.running_task(user)["ID"] == task_id, user
        assert sessions[user].server().get("ready"), user
        status = sessions[user].lab("GET", "/status")
        assert status.status_code == 200, f"{user}: {status.status_code}\n{swarm.lab_logs(user)}"


# The database as the previous JupyterHub left it: its last migration undone by
# JupyterHub's own alembic scripts (6.1's last one adds spawners.display_name).
UNDO_LAST_MIGRATION = """\
import os, tempfile
from alembic import command
from alembic.config import Config
from jupyterhub import dbutil
from gpuhub.services import hubdb
with tempfile.TemporaryDirectory() as tmp:
    ini = os.path.join(tmp, "alembic.ini")
    dbutil.write_alembic_ini(ini, hubdb.database_url())
    command.downgrade(Config(ini), "-1")
"""


def test_a_jupyterhub_upgrade_migrates_the_swarm_hub_database(swarm, sessions, measure):
    m = swarm.cluster.manager
    project = swarm.stack.project
    hub = f"{project}_hub"
    image = m.docker("service", "inspect", "--format",
                     "{{.Spec.TaskTemplate.ContainerSpec.Image}}", hub).stdout.strip()
    volume = f"{project}_hub-data:{names.HUB_DATA_DIR}"
    m.docker("service", "scale", "--detach=false", f"{hub}=0")
    try:
        m.docker("run", "--rm", "--network", "none", "-v", volume, image,
                 "python3", "-c", UNDO_LAST_MIGRATION)
        state = json.loads(m.docker("run", "--rm", "--network", "none", "-v", volume, image,
                                    "python3", "-m", "gpuhub.services.hubdb", "check").stdout)
        assert state["state"] == "older", state
        before = {u: swarm.running_task(u)["ID"] for u in USERS if swarm.tasks(u)}
        started = time.monotonic()
        result = swarm.invoke("up", "--no-build")
        measure("swarm: invoke up migrating the hub database (to the hub healthy)",
                time.monotonic() - started)
    finally:  # the next tests need a hub, whatever happened here
        m.docker("service", "scale", "--detach=false", f"{hub}=1", check=False)

    [said] = [ln for ln in result.stdout.splitlines() if "upgraded the hub database" in ln]
    assert f"to JupyterHub {state['jupyterhub']} (schema {state['head']})" in said, said
    copy = said.rsplit(" ", 1)[1]
    assert copy.startswith(str(swarm.stack.root / "backups" / "hub-db-")), copy
    assert oct(os.stat(copy).st_mode & 0o777) == "0o600"
    after = json.loads(m.docker("run", "--rm", "--network", "none", "-v", volume, image,
                                "python3", "-m", "gpuhub.services.hubdb", "check").stdout)
    assert after["state"] == "current", after
    # The labs ran on through the hub's stop; their users still reach them.
    for user, task_id in before.items():
        assert swarm.running_task(user)["ID"] == task_id, user
        assert sessions[user].server().get("ready"), user
        status = sessions[user].lab("GET", "/status")
        assert status.status_code == 200, f"{user}: {status.status_code}\n{swarm.lab_logs(user)}"
    HubUser(swarm.url, "bob").login(PASSWORD)
    os.unlink(copy)  # in the checkout's backups/ (the test stacks' project root)


def test_status_is_the_same_two_short_tables_in_swarm_mode(swarm):
    out = swarm.invoke("status").stdout
    services, labs = out.split("\n\n")
    rows = {line.split()[0]: line.split() for line in services.splitlines()[1:]}
    assert services.splitlines()[0].split() == ["SERVICE", "NODE", "STATE", "HEALTH", "SINCE"]
    manager = swarm.cluster.manager.name
    assert rows["hub"][1:4] == [manager, "running", "healthy"], out
    assert labs.splitlines()[0].split() == ["USER", "PROFILE", "GPUS", "SINCE"], out
    running = {u for u in USERS if swarm.tasks(u)}
    assert {line.split()[0] for line in labs.splitlines()[1:]} == running, out
    assert max(len(line) for line in out.splitlines()) < 120, out


def test_backup_takes_the_folders_under_swarm_homes_and_restore_puts_them_back(
        swarm, tmp_path):
    """Backup on the manager (helpers of the image the hub's service runs); restore into
    another project whose SWARM_HOMES is a new folder, then once more, which refuses."""
    homes = swarm.stack.settings["SWARM_HOMES"]
    folders = sorted(os.listdir(homes))
    assert "alice" in folders and os.path.isfile(os.path.join(homes, "alice", "notes.txt"))
    archive = tmp_path / "swarm-backup.tar.gz"
    out = swarm.invoke("backup", "--with-work-volumes", "--output", str(archive)).stdout
    assert f"work folders: {len(folders)}" in out, out
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        assert sorted(v["volume"] for v in manifest["volumes"]) == [f"home-{f}" for f in folders]
        with tarfile.open(fileobj=tar.extractfile("volumes/home-alice.tar")) as alice:
            assert alice.extractfile("./notes.txt").read() == b"kept across nodes"

    target = dict(swarm.stack.settings, COMPOSE_PROJECT_NAME=f"{swarm.stack.project}r",
                  SWARM_HOMES=str(tmp_path / "new-homes"))
    os.mkdir(target["SWARM_HOMES"])
    env_file = tmp_path / "target.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in target.items()))
    env = {"GPUHUB_ENV_FILE": str(env_file)}
    m = swarm.cluster.manager
    try:
        swarm.invoke("restore", str(archive), env=env)
        restored = os.path.join(target["SWARM_HOMES"], "alice")
        with open(os.path.join(restored, "notes.txt")) as f:
            assert f.read() == "kept across nodes"
        kept = os.stat(os.path.join(homes, "alice"))
        assert (os.stat(restored).st_uid, os.stat(restored).st_gid) == (kept.st_uid, kept.st_gid)
        assert sorted(os.listdir(target["SWARM_HOMES"])) == folders
        again = swarm.invoke("restore", str(archive), env=env, check=False)
        assert again.returncode == 1 and "restore never overwrites" in again.stderr, again.stderr
    finally:
        m.docker("volume", "rm", f"{target['COMPOSE_PROJECT_NAME']}_hub-data", check=False)
        shutil.rmtree(target["SWARM_HOMES"], ignore_errors=True)


def test_deluser_purge_data_removes_the_folder_under_swarm_homes(swarm, sessions):
    user = next((u for u in USERS if not swarm.tasks(u)), None)
    if user is None:  # every lab runs: stop one, its folder stays
        user = USERS[-1]
        sessions[user].stop(logs=swarm.logs)
    folder = os.path.join(swarm.stack.settings["SWARM_HOMES"], user)
    assert os.path.isdir(folder), f"{user}'s lab ran, so its folder exists"
    swarm.invoke("deluser", user, "--purge-data")
    assert not os.path.exists(folder), os.listdir(swarm.stack.settings["SWARM_HOMES"])
    # No folder left: the name is free again (adduser refuses a name whose folder was kept).
    assert swarm.invoke("adduser", user, "--password-stdin", stdin=PASSWORD + "\n").returncode == 0


def test_a_lab_service_of_a_user_the_hub_does_not_have_is_removed(swarm):
    """What a crash between a user's deletion and their lab's removal would leave in swarm
    mode: a lab service (gpuhub's labels and name) of a user the hub does not have. The
    gpu-reclaimer removes it at its next sweep, and says so in the hub's log."""
    from gpuhub.services import reclaim

    m, project = swarm.cluster.manager, swarm.stack.project
    name = swarm.service("ghost")
    m.docker("service", "create", "--detach", "--no-resolve-image", "--name", name,
             "--label", f"gpuhub.project={project}", "--label", "gpuhub.user=ghost",
             "--restart-condition", "none", "--entrypoint", "sleep",
             f"{swarm.cluster.registry}/{swarm.stack.settings['LAB_IMAGE']}", "600")
    patience = reclaim.ORPHAN_AFTER + 2 * reclaim.SWEEP_ROUNDS * int(
        swarm.stack.settings.get("GPU_SAMPLE_INTERVAL", "5")) + 60
    wait_until(lambda: m.docker("service", "inspect", name, check=False).returncode != 0,
               timeout=patience, interval=2, what="the gpu-reclaimer to remove ghost's lab service",
               state=swarm.logs)
    logged = m.docker("service", "logs", "--tail", "400", f"{project}_hub", check=False)
    said = logged.stdout + logged.stderr
    assert "removed the lab service" in said and "of ghost, whom the hub no longer has" in said


def test_node_add_prints_what_a_gpu_node_needs(swarm):
    out = swarm.invoke("node-add", "--label", "gpu=t4").stdout
    assert "docker swarm join --token SWMTKN-" in out
    # The variable as Swarm fills it: upper case.
    assert f'"{RESOURCE}=" + u' in out and f"DOCKER_RESOURCE_{RESOURCE.upper()}" in out
    assert "toolkit 1.19 or newer" in out and "CVE-2025-23266" in out
    assert "--label-add gpu=t4" in out


def test_an_ldap_login_works_the_same_in_swarm_mode(swarm, tmp_path):
    """slapd in the manager's namespace (an address of the test's own); the hub, a Swarm
    service there, gets the bind password and the CA as Swarm secrets."""
    directory.require()
    m = swarm.cluster.manager
    slapd = directory.start(tmp_path / "slapd", m.address, netns=m.netns)
    try:
        settings = login_stack.ldap_settings(tmp_path)
        (tmp_path / "ldap-bind-password").write_text(directory.SEARCH_PASSWORD + "\n")
        swarm.stack.settings.update(AUTHENTICATOR="ldap", LDAP_URL=slapd.ldaps_url,
                                    LDAP_CA_FILE=str(slapd.ca_file), ALLOWED_GROUPS="gpu-users",
                                    ADMIN_GROUPS="lab-admins", **settings)
        swarm.stack.write_env()
        swarm.invoke("up", "--no-build")  # waits for the new spec's hub to be healthy

        boss = HubUser(swarm.url, "boss")
        wait_until(lambda: boss.login(directory.PEOPLE_ENTRIES["boss"][0]), timeout=120,
                   interval=2, what="boss to log in through the directory", logs=swarm.logs)
        rows = {u["name"]: u for u in json.loads(swarm.invoke("users", "--json").stdout)}
        assert rows["boss"]["admin"] is True and rows["boss"]["groups"] == ["gpu-users", "lab-admins"]
        refused = LoginForm(swarm.url, "carol").post(directory.PEOPLE_ENTRIES["carol"][0], 60)
        assert refused.status_code == 403 and "not in a group allowed" in refused.text
        hub = m.docker("ps", "-q", "--filter",
                       f"label=com.docker.swarm.service.name={swarm.stack.project}_hub").stdout.split()[0]
        inspected = m.docker("inspect", hub).stdout
        assert directory.SEARCH_PASSWORD not in inspected + swarm.logs()
    finally:
        slapd.stop()


def test_a_node_whose_toolkit_ignores_swarms_grant_gives_the_user_one_line(swarm, sessions):
    """NVIDIA container toolkit 1.18.x (default mode) ignores swarm-resource: the lab would
    hold a GPU in Swarm's books and get none. The lab refuses to start and the user reads why."""
    for name in USERS:  # free the GPUs (a user deleted by an earlier test has no lab)
        if swarm.tasks(name):
            sessions[name].stop(logs=swarm.logs)
    erin = sessions["erin"]
    swarm.cluster.set_toolkit("1.18.2")
    try:
        answer = erin.start({"profile": "gpu1"})
        if answer.status_code == 202:
            said = erin.progress_messages(until="\0", timeout=240)[-1]
        else:
            assert answer.status_code == 500, f"{answer.status_code} {answer.text}\n" \
                + swarm.toolkit_evidence("erin")
            said = answer.json()["message"]
        if "Swarm granted" not in said:
            said += "\n" + swarm.toolkit_evidence("erin")
        assert "Swarm granted this lab 1 GPU(s) (DOCKER_RESOURCE_NVIDIA-GPU=GPU-" in said, said
        assert "toolkit 1.18.x ignores swarm-resource" in said, said
        wait_until(lambda: not erin.server(), timeout=60, what="erin's failed start to end",
                   state=erin.server, logs=swarm.logs)
    finally:
        swarm.cluster.set_toolkit("")
    swarm.spawn(erin, "gpu1")  # a node on a good toolkit: the lab gets its GPU
    assert "GPU-" in swarm.in_lab("erin", "nvidia-smi", "-L")


def test_invoke_down_removes_the_stack_and_labs(swarm):
    swarm.invoke("down")
    m = swarm.cluster.manager
    wait_until(lambda: not m.docker("service", "ls", "-q").stdout.split(), timeout=60,
               what="no services left", state=lambda: m.docker("service", "ls").stdout)
