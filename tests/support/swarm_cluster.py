"""A real three-engine Docker Swarm on one machine, for the swarm-mode tests.

Each node is a real ``dockerd`` with its own data root, in its own network namespace
(its own hostname too), joined to the others by veth pairs on a bridge that lives in
a fourth namespace: every address is inside namespaces this module creates. A
registry from Debian's ``docker-registry`` package listens on this machine's loopback;
inside each node's namespace a socat relay answers on the same loopback port, so
``127.0.0.1:<port>`` names the one registry everywhere (and Docker trusts loopback
registries over plain HTTP). Workers get the NVIDIA test double as default runtime,
each with its own fake GPUs advertised as Swarm generic resources.

Everything is torn down by :meth:`SwarmCluster.teardown`, which tolerates a half-built
cluster, so a fixture can call it in ``finally``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpuhub.core.swarm import resource_env
from harness import ROOT
from harness.stack import free_port
from harness.wait import wait_until

DOUBLE = ROOT / "tests" / "gpu_double"
SUBNET = "192.168.213"  # inside the test's own namespaces only
# SWARM_GPU_RESOURCE's default; the runtime's swarm-resource names the variable Swarm fills
# as gpuhub.core.swarm.resource_env spells it (upper case: tests/unit/test_swarm_mode.py).
RESOURCE = "NVIDIA-GPU"


def _run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


@dataclass
class Node:
    name: str  # also its hostname
    netns: str
    address: str
    root: Path
    gpus: list[dict] = field(default_factory=list)
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        result = _run("docker", "-H", self.host, *args, check=False, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f"docker {' '.join(args)} on {self.name} exited "
                                 f"{result.returncode}: {result.stderr.strip()[-2000:]}")
        return result

    def log_tail(self, lines: int = 40) -> str:
        path = self.root / "dockerd.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class SwarmCluster:
    """Three engines (n1 manager without GPUs, n2 and n3 workers with fake GPUs)."""

    def __init__(self, workdir: Path, gpus_per_worker: int = 2):
        self.id = secrets.token_hex(2)
        self.root = Path(f"/tmp/gpuhub-swarm-{self.id}")  # short: unix socket paths
        self.workdir = workdir
        self.switch = f"gs-{self.id}-sw"
        self.host_netns = f"gs-{self.id}-host"  # a name for this machine's own namespace
        self.registry_port = free_port()
        self.registry_dir = self.root / "registry"
        self.homes = self.root / "homes"
        self.processes: list[subprocess.Popen] = []
        self.nodes = []
        for i in (1, 2, 3):
            gpus = [] if i == 1 else [
                {"index": j, "uuid": f"GPU-{self.id}{i}{j:03d}-0000-4000-8000-00000000000{i}",
                 "name": "Tesla T4", "memory_mib": 15360} for j in range(gpus_per_worker)]
            self.nodes.append(Node(name=f"gs-{self.id}-n{i}", netns=f"gs-{self.id}-n{i}",
                                   address=f"{SUBNET}.1{i}", root=self.root / f"n{i}", gpus=gpus))

    @property
    def manager(self) -> Node:
        return self.nodes[0]

    @property
    def registry(self) -> str:
        return f"127.0.0.1:{self.registry_port}"

    # --- bring-up ----------------------------------------------------------------
    def start(self) -> None:
        self.root.mkdir(mode=0o755)
        self.homes.mkdir()
        self._network()
        self._registry()
        for node in self.nodes:
            self._relay(node.netns, self.registry_port, "127.0.0.1", self.registry_port,
                        into_root=True)
            self._dockerd(node)
        for node in self.nodes:
            wait_until(lambda n=node: n.docker("version", check=False).returncode == 0,
                       timeout=90, interval=0.5, what=f"dockerd of {node.name} answers",
                       logs=lambda n=node: n.log_tail())
        self._swarm()

    def _network(self) -> None:
        # Relays from the nodes enter the machine's namespace by this name (a /proc/<pid>
        # path would die with the process that started the cluster).
        _run("ip", "netns", "attach", self.host_netns, str(os.getpid()))
        _run("ip", "netns", "add", self.switch)
        sw = ["ip", "netns", "exec", self.switch]
        _run(*sw, "ip", "link", "set", "lo", "up")
        _run(*sw, "ip", "link", "add", "br0", "type", "bridge")
        _run(*sw, "ip", "link", "set", "br0", "up")
        for i, node in enumerate(self.nodes, 1):
            outer = f"gs{self.id}n{i}"
            _run("ip", "netns", "add", node.netns)
            _run("ip", "netns", "exec", node.netns, "ip", "link", "set", "lo", "up")
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0",
                 "netns", node.netns)
            _run("ip", "link", "set", outer, "netns", self.switch)
            _run(*sw, "ip", "link", "set", outer, "master", "br0", "up")
            _run("ip", "netns", "exec", node.netns, "ip", "addr", "add",
                 f"{node.address}/24", "dev", "eth0")
            _run("ip", "netns", "exec", node.netns, "ip", "link", "set", "eth0", "up")

    def _spawn(self, args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd="/",
                                    start_new_session=True)
        self.processes.append(proc)
        return proc

    def _registry(self) -> None:
        self.registry_dir.mkdir()
        config = self.root / "registry.yml"
        config.write_text(json.dumps({
            "version": 0.1, "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(self.registry_dir)},
                        "delete": {"enabled": True}},
            "http": {"addr": self.registry}}))
        self._spawn(["docker-registry", "serve", str(config)], self.root / "registry.log")
        wait_until(lambda: self._port_open("127.0.0.1", self.registry_port), timeout=30,
                   interval=0.2, what="the registry listens",
                   logs=lambda: (self.root / "registry.log").read_text()[-2000:])

    def _relay(self, netns: str, port: int, to_host: str, to_port: int, into_root: bool) -> None:
        """socat in ``netns`` on 127.0.0.1:port, forwarding to to_host:to_port.

        into_root: the target is on the machine's own loopback (this process's netns).
        """
        target = f"socat STDIO TCP\\:{to_host}\\:{to_port}"  # socat: \\: inside EXEC
        if into_root:
            target = f"nsenter --net=/run/netns/{self.host_netns} {target}"
        self._spawn(["nsenter", f"--net=/run/netns/{netns}", "socat",
                     f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                     f"EXEC:{target}"], self.root / f"relay-{netns}-{port}.log")

    def relay_to_manager(self, port: int, local: int | None = None) -> int:
        """A loopback port here (``local``, else a free one) that reaches ``port`` on the
        manager's address."""
        local = local or free_port()
        self._spawn(["socat", f"TCP-LISTEN:{local},bind=127.0.0.1,fork,reuseaddr",
                     f"EXEC:nsenter --net=/run/netns/{self.manager.netns} "
                     f"socat STDIO TCP\\:{self.manager.address}\\:{port}"],
                    self.root / f"relay-manager-{port}.log")
        wait_until(lambda: self._port_open("127.0.0.1", local), timeout=10, interval=0.1,
                   what="the relay to the manager listens")
        return local

    @staticmethod
    def _port_open(host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    def _dockerd(self, node: Node) -> None:
        node.root.mkdir()
        config = {
            "data-root": str(node.root / "data"), "exec-root": str(node.root / "exec"),
            "pidfile": str(node.root / "docker.pid"), "hosts": [node.host],
            "cgroup-parent": f"gpuhub-swarm-{node.name}",
        }
        driver = _run("docker", "info", "--format", "{{.Driver}}", check=False).stdout.strip()
        if driver:
            config["storage-driver"] = driver  # what works on this machine's main engine
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        if node.gpus:
            inventory = node.root / "gpus.json"
            inventory.write_text(json.dumps({"driver_version": "535.183.01",
                                             "cuda_version": "12.2", "gpus": node.gpus}))
            runtime = node.root / "nvidia-container-runtime"
            runtime.write_text(
                "#!/bin/sh\n"
                f"export GPUHUB_GPU_DOUBLE_INVENTORY={inventory}\n"
                f"export GPUHUB_GPU_DOUBLE_SWARM_RESOURCE={resource_env(RESOURCE)}\n"
                f"export GPUHUB_GPU_DOUBLE_LOG={node.root / 'gpu-double.log'}\n"
                # A test may make this node model another toolkit (set_toolkit).
                f"[ -r {node.root / 'toolkit.env'} ] && . {node.root / 'toolkit.env'}\n"
                f"exec {DOUBLE / 'nvidia-container-runtime'} \"$@\"\n")
            runtime.chmod(0o755)
            config["node-generic-resources"] = [f"{RESOURCE}={g['uuid']}" for g in node.gpus]
            config["default-runtime"] = "nvidia"
            config["runtimes"] = {"nvidia": {"path": str(runtime)}}
        conf = node.root / "daemon.json"
        conf.write_text(json.dumps(config, indent=2))
        node.process = self._spawn(
            ["nsenter", f"--net=/run/netns/{node.netns}", "unshare", "--uts", "sh", "-c",
             f"hostname {node.name} && exec dockerd --config-file {conf}"],
            node.root / "dockerd.log", env=env)

    def _swarm(self) -> None:
        m = self.manager
        m.docker("swarm", "init", "--advertise-addr", m.address)
        token = m.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        for node in self.nodes[1:]:
            node.docker("swarm", "join", "--token", token, f"{m.address}:2377")
        wait_until(lambda: self.ready_nodes() == len(self.nodes), timeout=60, interval=0.5,
                   what="all nodes Ready", logs=lambda: m.docker("node", "ls", check=False).stdout)

    def set_toolkit(self, version: str) -> None:
        """Make every GPU node's NVIDIA runtime model toolkit ``version`` ("" for the
        default, 1.19.0) from its next container on."""
        for node in self.nodes:
            env = node.root / "toolkit.env"
            if version:
                env.write_text(f"export GPUHUB_GPU_DOUBLE_TOOLKIT={version}\n")
            else:
                env.unlink(missing_ok=True)

    def ready_nodes(self) -> int:
        out = self.manager.docker("node", "ls", "--format", "{{.Status}}", check=False).stdout
        return out.split().count("Ready")

    def node_of(self, node_id: str) -> Node:
        info = json.loads(self.manager.docker("node", "inspect", node_id).stdout)[0]
        host = info["Description"]["Hostname"]
        return next(n for n in self.nodes if n.name == host)

    # --- tear-down -----------------------------------------------------------------
    def teardown(self) -> None:
        """Stop engines, relays and registry; remove namespaces, mounts and files."""
        for node in self.nodes:
            if node.process and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for node in self.nodes:
            if node.process:
                try:
                    node.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    node.process.kill()
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        # Container processes and shims of these engines, should any have outlived them.
        _run("pkill", "-9", "-f", str(self.root), check=False)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.root))]
        for mount in sorted(mounts, key=len, reverse=True):
            _run("umount", "-l", mount, check=False)
        for name in [n.netns for n in self.nodes] + [self.switch, self.host_netns]:
            _run("ip", "netns", "del", name, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What teardown failed to remove (namespaces, processes, mounts, files)."""
        found = [f"netns {n}" for n in _run("ip", "netns", "list", check=False).stdout.split()
                 if n.startswith(f"gs-{self.id}-")]
        found += [f"process {line}" for line in
                  _run("pgrep", "-af", str(self.root), check=False).stdout.splitlines()
                  if "pgrep" not in line]
        found += [f"mount {line.split()[1]}" for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.root))]
        if self.root.exists():
            found.append(f"folder {self.root}")
        return found
