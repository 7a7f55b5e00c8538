"""Host protection: the hub reaches Docker only through docker-proxy, and labs reach
neither the Docker host nor 169.254.0.0/16 nor LAB_BLOCKED_NETWORKS (lab-firewall).

The shared stack runs the defaults (both on). A second stack, with both off, is the
control: the same lab image on the same kind of network does reach the same targets.
Every packet these tests send goes to a gateway of a Docker network a test stack made,
or into a network namespace made here (tests/support/hostnet.py); none to
169.254.0.0/16, whose rule is read from iptables, never tried.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from gpuhub.core import lablimits
from gpuhub.core.names import BROKER_DATA_VOLUME, bridge_name, hub_data_volume
from gpuhub.labfirewall.service import (
    METADATA_ADDRESSES,
    Firewall,
    Ruleset,
    choose_backend,
)
from gpuhub.tasks.labsnetwork import LabsAddresses
from harness.hostile_docker import hostile_requests
from harness.hub import HubUser
from harness.stack import BLOCKED_FOR_TESTS
from harness.wait import wait_until
from support.hostnet import Listener, NamespacedService

SPAWN_TIMEOUT = 180
PROBE = Path(__file__).resolve().parents[1] / "support" / "docker_probe.py"
REFUSED = "refused by gpuhub docker-proxy"

# Runs in a lab: try each (name, address, port); print what answered, or the error.
CONNECT = """
import json, socket
def attempt(address, port):
    try:
        with socket.create_connection((address, port), timeout=5) as conn:
            return conn.recv(100).decode().strip()
    except OSError as err:
        return f"error: {err}"
print(json.dumps({name: attempt(address, port) for name, address, port in %r}))
"""


@pytest.fixture(scope="module")
def as_root():
    if os.geteuid() != 0:
        pytest.fail("these tests read the host's iptables and make a network namespace: "
                    "run them as root (CI does)")


def _lab_user(stack, name: str, profile: str) -> HubUser:
    user = stack.signed_up(name)
    user.start_ready({"profile": profile}, SPAWN_TIMEOUT, logs=stack.logs)
    return user


def _stop(stack, user: HubUser) -> None:
    if user.server():
        user.stop(logs=stack.logs)


@pytest.fixture(scope="module")
def hana(stack):
    """A GPU lab on the shared stack: docker-proxy and lab-firewall on."""
    user = _lab_user(stack, "hana", "gpu1")
    yield user
    _stop(stack, user)


@pytest.fixture(scope="module")
def open_stack(stack_factory, as_root):
    """The control: a stack with the socket mounted in the hub and no lab firewall."""
    stack = stack_factory(DOCKER_SOCKET_PROXY="false", LAB_FIREWALL="false",
                          LAB_BLOCKED_NETWORKS="")
    stack.up("--no-build")
    yield stack
    stack.teardown()


@pytest.fixture(scope="module")
def olga(open_stack):
    user = _lab_user(open_stack, "olga", "cpu")
    yield user
    _stop(open_stack, user)


@pytest.fixture(scope="module")
def fake_metadata(as_root):
    """A service at an address in LAB_BLOCKED_NETWORKS (the test stacks block 198.18.0.0/15)."""
    service = NamespacedService("metadata")
    assert ipaddress.ip_address(service.address) in ipaddress.ip_network(BLOCKED_FOR_TESTS)
    yield service
    service.close()


def _gateway(stack) -> str:
    return stack.docker("network", "inspect", f"{stack.project}-labs", "--format",
                        "{{range .IPAM.Config}}{{.Gateway}}{{end}}").stdout.strip()


def _attempts(user: HubUser, targets: list[tuple[str, str, int]]) -> dict[str, str]:
    return json.loads(user.run_code(CONNECT % (targets,)).strip().splitlines()[-1])


def _labs_addresses(stack) -> LabsAddresses:
    return LabsAddresses.of(stack.docker(
        "network", "inspect", f"{stack.project}-labs", "--format",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}").stdout.strip())


def _firewall(stack) -> Firewall:
    """The rules the stack's lab-firewall should hold, checked with this host's iptables."""
    apart = _labs_addresses(stack)
    rules = Ruleset(stack.project, bridge_name(stack.project), (BLOCKED_FOR_TESTS,),
                    peers=(apart.hub, apart.proxy))
    return Firewall(rules, choose_backend())


# --- docker-proxy ----------------------------------------------------------------------

def test_only_docker_proxy_holds_the_docker_socket(stack):
    hub = stack.service_container("hub")
    assert stack.docker("exec", hub, "test", "-e", "/var/run/docker.sock", check=False).returncode != 0
    holders = []
    for container in stack.compose("ps", "-q").stdout.split():
        info = stack.inspect(container)
        if any(m.get("Source") == "/var/run/docker.sock" for m in info["Mounts"]):
            holders.append(info["Config"]["Labels"]["com.docker.compose.service"])
    assert holders == ["docker-proxy"]
    proxy = stack.inspect(stack.service_container("docker-proxy"))
    assert list(proxy["NetworkSettings"]["Networks"]) == [f"{stack.project}_docker-api"], \
        "docker-proxy must be reachable by the hub only, never from the labs network"
    assert proxy["HostConfig"]["CapDrop"] == ["ALL"] and proxy["HostConfig"]["ReadonlyRootfs"]


def test_a_gpu_lab_starts_through_the_proxy(stack, hana):
    env = dict(e.split("=", 1) for e in stack.inspect(stack.lab_container("hana"))["Config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"].startswith("GPU-"), env["NVIDIA_VISIBLE_DEVICES"]
    log = stack.docker("logs", stack.service_container("docker-proxy")).stdout
    created = rf"POST /v1\.\d+/containers/create\?name={stack.lab_container('hana')} -> 201"
    assert re.search(created, log), log[-2000:]


def test_the_labs_network_has_no_ipv6(stack, hana):
    assert stack.docker("network", "inspect", "--format", "{{.EnableIPv6}}",
                        f"{stack.project}-labs").stdout.strip() == "false"
    # /proc/net/if_inet6: address, index, prefix, scope (00: global), flags, interface.
    scopes = hana.run_code("print(sorted({l.split()[3] for l in open('/proc/net/if_inet6')}) "
                           "if __import__('os').path.exists('/proc/net/if_inet6') else [])")
    assert "'00'" not in scopes, f"a lab has a global IPv6 address: {scopes}"


def _first_gpu(stack) -> str:
    rows = json.loads(stack.invoke("gpus", "--json").stdout)
    assert rows, "the test stacks run with the NVIDIA test double's GPUs"
    return rows[0]["uuid"] or rows[0]["gpu"]


def _forbidden(stack, info: dict) -> list[str]:
    """What Docker recorded for a container that no lab may have (empty: nothing)."""
    host, config = info["HostConfig"], info["Config"]
    shared = stack.settings.get("SHARED_DATA_DIR", "")
    found = []
    if host.get("Privileged"):
        found.append("privileged")
    if host.get("CapAdd"):
        found.append(f"CapAdd {host['CapAdd']}")
    if "ALL" not in (host.get("CapDrop") or []):
        found.append("capabilities kept")
    if any("unconfined" in o or o.startswith(("seccomp", "apparmor", "label"))
           for o in host.get("SecurityOpt") or []) or \
            "no-new-privileges" not in (host.get("SecurityOpt") or []):
        found.append(f"SecurityOpt {host.get('SecurityOpt')}")
    if host.get("NetworkMode") != f"{stack.project}-labs":
        found.append(f"network {host.get('NetworkMode')}")
    for key in ("PidMode", "IpcMode", "UTSMode", "UsernsMode"):
        if (host.get(key) or "").startswith(("host", "container:")):
            found.append(f"{key} {host[key]}")
    for mount in info.get("Mounts") or []:
        if mount["Type"] == "bind" and mount["Source"] != shared:
            found.append(f"bind of {mount['Source']}")
        if mount["Type"] == "volume" and not mount["Name"].startswith(f"{stack.project}-home-"):
            found.append(f"volume {mount['Name']}")
    for key in ("Devices", "DeviceCgroupRules", "PortBindings", "Sysctls", "Ulimits", "Links",
                "VolumesFrom", "ExtraHosts", "Dns"):
        if host.get(key):
            found.append(f"{key} {host[key]}")
    # Only the lab's own /tmp, of the setting's size (LAB_TMP_SIZE; the stack's default).
    if (host.get("Tmpfs") or {}) != lablimits.lab_tmp(stack.settings.get("LAB_TMP_SIZE", "1G")):
        found.append(f"Tmpfs {host['Tmpfs']}")
    if any(r.get("Count") for r in host.get("DeviceRequests") or []):
        found.append("every GPU")
    if host.get("LogConfig", {}).get("Type") not in ("json-file", "local", "journald"):
        found.append(f"logging {host.get('LogConfig')}")
    if (host.get("RestartPolicy") or {}).get("Name") not in ("", "no"):
        found.append(f"restart {host['RestartPolicy']}")
    if host.get("OomScoreAdj") or host.get("OomKillDisable"):
        found.append("OOM score or OOM killer")
    if host.get("CgroupParent") not in (None, "", f"/gpuhub-{stack.project}-labs"):
        found.append(f"cgroup parent {host['CgroupParent']} (not the labs' own)")
    if host.get("MaskedPaths") == [] or host.get("ReadonlyPaths") == []:
        found.append("unmasked /proc")
    if config.get("User") in ("root", "0") or config.get("StopSignal") not in (None, "SIGTERM"):
        found.append(f"user {config.get('User')!r} / stop signal {config.get('StopSignal')!r}")
    return found


def test_the_broker_lets_nothing_dangerous_reach_docker(stack, hana, tmp_path):
    """From inside the hub (where an attacker stands), against the real daemon."""
    hub = stack.service_container("hub")
    firewall = stack.service_container("lab-firewall")
    firewall_before = stack.inspect(firewall)
    # Named like a lab but made by hand, privileged: the hub must not be able to start it.
    evil = stack.docker("create", "--name", f"{stack.project}-lab-evil", "--privileged",
                        "--label", f"gpuhub.project={stack.project}", "--label",
                        "gpuhub.user=evil", "--network", f"{stack.project}-labs",
                        stack.settings["LAB_IMAGE"], "true").stdout.strip()
    # A stopped container of no project: the hub must not be able to start or remove it.
    other = stack.docker("create", "--name", f"gpuhubprobe-other-{stack.project}",
                         stack.settings["LAB_IMAGE"], "true").stdout.strip()
    started_at = stack.docker("inspect", "--format", "{{.Created}}", other).stdout.strip()
    cases = hostile_requests(stack.project, stack.settings["LAB_IMAGE"], _first_gpu(stack),
                             stack.settings.get("SHARED_DATA_DIR", ""), hub=hub,
                             firewall=firewall, other=other)
    spec = {"project": stack.project, "lab_image": stack.settings["LAB_IMAGE"],
            "gpu": _first_gpu(stack),
            "cases": [(case, method, target, {"__bytes__": base64.b64encode(body).decode()}
                       if isinstance(body, bytes) else body)
                      for case, method, target, body in cases]}
    (tmp_path / "cases.json").write_text(json.dumps(spec))
    stack.docker("cp", str(tmp_path / "cases.json"), f"{hub}:/tmp/cases.json")
    try:
        probe = subprocess.run(["docker", "exec", "-i", hub, "python3", "-", "/tmp/cases.json"],
                               stdin=PROBE.open(), capture_output=True, text=True, timeout=600)
        assert probe.returncode == 0, probe.stderr
        results = json.loads(probe.stdout)
        allowed = {case: r for case, r in results.items() if case.startswith("allowed:")}
        assert len(allowed) == 11 and all(s == 200 for s, _ in allowed.values()), allowed
        assert results["listed projects"][1] == [stack.project], \
            "the hub sees only its own project's containers"
        wrong = {case: results[case] for case, *_ in cases
                 if results[case][0] not in (403, 413) or REFUSED not in results[case][1]}
        assert not wrong, f"not refused by the broker: {wrong}"
        # What the daemon recorded: every container made since the probe began.
        made = [c for c in stack.docker("ps", "-aq", "--no-trunc").stdout.split()
                if stack.docker("inspect", "--format", "{{.Created}}", c).stdout.strip() > started_at]
        kept = stack.inspect(stack.lab_container("probekept"))
        assert [c for c in made] == [kept["Id"]], \
            [stack.inspect(c)["Name"] for c in made]
        assert _forbidden(stack, kept) == [], _forbidden(stack, kept)
        assert kept["HostConfig"]["PidsLimit"] == 64
        # The other containers are as they were: not started, stopped or removed.
        assert stack.inspect(other)["State"]["Status"] == "created"
        assert stack.inspect(evil)["State"]["Status"] == "created"
        after = stack.inspect(firewall)
        assert (after["Id"], after["State"]["StartedAt"], after["State"]["Running"]) == (
            firewall_before["Id"], firewall_before["State"]["StartedAt"], True)
        for container in stack.docker("ps", "-aq", "--no-trunc", "--filter",
                                      f"label=gpuhub.project={stack.project}").stdout.split():
            if container != evil:  # made by hand, above
                assert _forbidden(stack, stack.inspect(container)) == []
        # The stack's own volumes, which two of the requests tried to remove, are there.
        for volume in (hub_data_volume(stack.project), f"{stack.project}_{BROKER_DATA_VOLUME}"):
            assert stack.docker("volume", "inspect", volume, check=False).returncode == 0, volume
    finally:
        stack.docker("rm", "-f", evil, other, stack.lab_container("probekept"), check=False)
        stack.docker("volume", "rm", f"{stack.project}-home-probekept", check=False)


# --- lab-firewall ----------------------------------------------------------------------

def test_labs_cannot_reach_the_host_but_reach_the_hub(stack, hana, open_stack, olga):
    here, there = Listener(_gateway(stack), "host"), Listener(_gateway(open_stack), "host")
    try:
        # Control: a lab without the firewall reaches the host on its network's gateway.
        assert _attempts(olga, [("gateway", there.address, there.port)]) == {"gateway": "host"}
        assert there.accepted == 1
        got = _attempts(hana, [("own gateway", here.address, here.port),
                               ("another host address", there.address, there.port)])
        assert all(answer.startswith("error:") for answer in got.values()), got
        assert (here.accepted, there.accepted) == (0, 1), "a connection reached the host"
    finally:
        here.close()
        there.close()
    # Still reachable: the hub's API (on the labs network), and names on it. The hub API
    # (8081) and the proxy API (8001) answer a lab, and refuse it without their tokens.
    out = hana.run_code(
        "import os, socket, urllib.error, urllib.request\n"
        "def status(url, token=None):\n"
        "    headers = {'Authorization': 'token ' + token} if token else {}\n"
        "    try:\n"
        "        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),"
        " timeout=10).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        return e.code\n"
        "api, token = os.environ['JUPYTERHUB_API_URL'], os.environ['JUPYTERHUB_API_TOKEN']\n"
        "print(status(api + '/user', token), status(api + '/users'), status(api + '/users', token))\n"
        "print(status('http://proxy:8001/api/routes'),"
        " status('http://proxy:8001/api/routes', token))\n"
        "try:\n    socket.getaddrinfo('docker-proxy', 2375); print('docker-proxy found')\n"
        "except OSError:\n    print('no docker-proxy')\n")
    assert out.splitlines() == ["200 403 403", "403 403", "no docker-proxy"], out


# Runs in a lab: a server of the user's own on every address (as a Dask dashboard or
# `python -m http.server` would be), outliving the kernel; it answers each connection.
LISTEN = """
import subprocess, sys
server = (
    "import socket\\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\\n"
    "s.bind(('0.0.0.0', %d)); s.listen()\\n"
    "while True:\\n"
    "    conn, _ = s.accept(); conn.sendall(b'iris\\\\n'); conn.close()\\n")
subprocess.Popen([sys.executable, "-c", server], start_new_session=True)
print("listening")
"""
IRIS_PORT = 8765


def _rejected_between_labs(stack) -> int:
    """Packets the lab firewall's "labs may not reach each other" rule has refused."""
    listed = subprocess.run([choose_backend(), "-w", "-L", _firewall(stack).rules.forward_chain,
                             "-v", "-x", "-n"], capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in listed.splitlines() if "labs may not reach each other" in ln]
    return int(line.split()[0])


def _connect_from_service(stack, service: str, address: str, port: int) -> str:
    code = (f"import socket; c = socket.create_connection(({address!r}, {port}), timeout=5); "
            "print(c.recv(100).decode().strip())")
    found = stack.docker("exec", stack.service_container(service), "python3", "-c", code,
                         check=False)
    return found.stdout.strip() or f"error: {found.stderr.strip()[-200:]}"


def test_labs_cannot_reach_each_other_but_the_hub_and_proxy_reach_both(stack, hana, as_root):
    iris = _lab_user(stack, "iris", "cpu")
    try:
        apart = _labs_addresses(stack)
        network = f"{stack.project}-labs"
        lab_address = stack.inspect(stack.lab_container("iris"))["NetworkSettings"][
            "Networks"][network]["IPAddress"]
        assert ipaddress.ip_address(lab_address) in ipaddress.ip_network(apart.lab_range)
        for service, address in (("hub", apart.hub), ("proxy", apart.proxy)):
            found = stack.inspect(stack.service_container(service))
            assert found["NetworkSettings"]["Networks"][network]["IPAddress"] == address
        assert "listening" in iris.run_code(LISTEN % IRIS_PORT)
        # The hub and the proxy reach iris's own server, and both labs answer through the
        # proxy (the hub reaches them for its API, the proxy for every request).
        wait_until(lambda: _connect_from_service(stack, "hub", lab_address, IRIS_PORT) == "iris",
                   timeout=30, what="iris's server to answer the hub")
        assert _connect_from_service(stack, "proxy", lab_address, IRIS_PORT) == "iris"
        assert hana.lab("GET", "/status").status_code == 200
        assert iris.lab("GET", "/status").status_code == 200
        # hana's lab reaches neither iris's server nor his Jupyter server, and the kernel
        # counted the refusals on the rule that keeps labs apart.
        before = _rejected_between_labs(stack)
        got = _attempts(hana, [("iris's server", lab_address, IRIS_PORT),
                               ("iris's lab", lab_address, 8888)])
        assert all(answer.startswith("error:") for answer in got.values()), got
        assert _rejected_between_labs(stack) >= before + 2
    finally:
        _stop(stack, iris)


def test_labs_cannot_reach_metadata_or_blocked_networks(stack, hana, olga, fake_metadata):
    target = [("metadata", fake_metadata.address, fake_metadata.port)]
    assert _attempts(olga, target) == {"metadata": "metadata"}, "the control must get through"
    got = _attempts(hana, target)
    assert got["metadata"].startswith("error:"), got
    # 169.254.0.0/16 is refused by the same chain: read the rules, send nothing there.
    assert _firewall(stack).missing() == []
    chain = subprocess.run([choose_backend(), "-S", _firewall(stack).rules.forward_chain],
                           capture_output=True, text=True, check=True).stdout
    assert "-d 169.254.0.0/16" in chain and f"-d {BLOCKED_FOR_TESTS}" in chain, chain
    assert f'--comment "gpuhub {stack.project}: labs may not reach 169.254.0.0/16"' in chain
    for address in METADATA_ADDRESSES:  # the other clouds' metadata services
        assert f"-d {address} " in chain, chain


def test_the_gpu_lab_stops_through_the_proxy(stack, hana):
    lab = stack.inspect(stack.lab_container("hana"))["Id"]
    hana.stop(logs=stack.logs)
    assert stack.docker("ps", "-aq", "--filter", f"id={lab}").stdout == ""
    log = stack.docker("logs", stack.service_container("docker-proxy")).stdout
    assert re.search(rf"POST /v1\.\d+/containers/{lab}/stop\S* -> 204", log), log[-2000:]
    held = json.loads(stack.invoke("gpus", "--json").stdout)
    assert "hana" not in [row["held_by"] for row in held], held


def test_rules_someone_else_removes_come_back(stack, as_root):
    firewall = _firewall(stack)
    builtin, jump = firewall.rules.jumps()[0]
    firewall.iptables("-D", builtin, *jump)
    firewall.iptables("-F", firewall.rules.forward_chain)
    assert len(firewall.missing()) == 2
    wait_until(lambda: firewall.missing() == [], timeout=30, interval=1,
               what="lab-firewall to put its rules back", state=firewall.missing,
               logs=lambda: stack.docker("logs", stack.service_container("lab-firewall")).stdout)
    log = stack.docker("logs", stack.service_container("lab-firewall")).stdout
    assert "putting the rules back" in log, log


def test_the_direct_socket_setup_has_neither_helper(open_stack, olga):
    hub = open_stack.service_container("hub")
    assert open_stack.docker("exec", hub, "test", "-S", "/var/run/docker.sock").returncode == 0
    assert not open_stack.service_container("docker-proxy")
    assert not open_stack.service_container("lab-firewall")
    rules = Ruleset(open_stack.project, bridge_name(open_stack.project))
    assert len(Firewall(rules, choose_backend()).missing()) == 4, "no rules for this stack"


def test_labs_stay_cut_off_when_the_lab_firewall_dies_or_stops(stack, as_root):
    firewall = _firewall(stack)
    ivan = _lab_user(stack, "ivan", "cpu")
    service = stack.service_container("lab-firewall")
    # Dies (its process killed from the host, as a crash): the rules stay, Docker restarts it.
    os.kill(stack.inspect(service)["State"]["Pid"], signal.SIGKILL)
    assert firewall.missing() == [], "a lab-firewall that died must leave its rules"
    wait_until(lambda: stack.inspect(service)["State"].get("Health", {}).get("Status") == "healthy",
               timeout=60, interval=1, what="lab-firewall to be restarted and healthy",
               state=lambda: stack.inspect(service)["State"],
               logs=lambda: stack.docker("logs", service).stdout)
    # Stopped by hand: the rules stay too, and the running lab is still cut off.
    stack.docker("stop", service)
    assert firewall.missing() == [], "stopping lab-firewall must leave its rules"
    here = Listener(_gateway(stack), "host")
    try:
        got = _attempts(ivan, [("gateway", here.address, here.port)])
        assert got["gateway"].startswith("error:") and here.accepted == 0, got
    finally:
        here.close()
    # New labs are refused while it is not running.
    jana = stack.signed_up("jana")
    refused = jana.start({"profile": "cpu"})
    assert refused.status_code == 503 and "lab firewall" in refused.json()["message"], refused.text
    assert stack.docker("ps", "-aq", "--filter", f"name={stack.lab_container('jana')}").stdout == ""
    stack.up("--no-build")
    assert firewall.missing() == []
    jana.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    jana.stop(logs=stack.logs)
    ivan.stop(logs=stack.logs)


def test_down_removes_the_rules_and_up_puts_them_back(stack, as_root):
    firewall = _firewall(stack)
    assert firewall.missing() == []
    stack.invoke("down")
    assert len(firewall.missing()) == 4
    saved = subprocess.run([f"{firewall.backend}-save"], capture_output=True, text=True).stdout
    assert stack.project not in saved and firewall.rules.bridge not in saved
    stack.up("--no-build")  # waits until lab-firewall is healthy: its rules are in place
    # The labs network is made anew: its subnet (and so the hub's and proxy's addresses,
    # the firewall's peers) is whatever Docker's allocator picks now.
    assert _firewall(stack).missing() == []
