"""Lab memory limits on a real stack: a lab over its limit is the one that loses, alone.

Docker gives each lab its own memory cgroup. When a lab goes over its limit, the kernel's
OOM killer chooses inside that lab only, normally its biggest process: the Python kernel
that allocated. The lab's server keeps running and restarts the kernel (JupyterLab then
says the kernel died). Only when the server itself is chosen does the whole lab stop.
The facts are read where Docker records them (``docker inspect``, ``docker events``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import websocket

from gpuhub.core import lablimits
from harness.hub import HubUser, _execute_request
from harness.wait import wait_until

SPAWN_TIMEOUT = 180
LIMIT = "512M"
LIMIT_BYTES = 512 * 1024 ** 2
# All labs together (LABS_MEM_LIMIT): more than one lab's limit, less than two labs'.
TOGETHER = "768M"
TOGETHER_BYTES = 768 * 1024 ** 2
# Within one lab's limit (with the lab's server and kernel), over the limit of two together.
ALLOCATE_SOME = ("chunks = []\n"
                 "for _ in range(12):\n"
                 "    chunks.append(b'\\x01' * (32 * 1024 * 1024))\n"
                 "print('allocated', len(chunks))\n")
PROFILES = "- {display_name: CPU only, slug: cpu, gpus: 0}\n"
# Four times the limit, in pages that are really written: more than the limit plus the
# swap Docker allows a lab by default (as much again as its memory, if the host has swap).
ALLOCATE = ("chunks = []\n"
            "for _ in range(64):\n"
            "    chunks.append(b'\\x01' * (32 * 1024 * 1024))\n"
            "print('allocated', len(chunks))\n")
CGROUP_OOM_KILLS = """
import os
v2 = '/sys/fs/cgroup/memory.events'
v1 = '/sys/fs/cgroup/memory/memory.oom_control'
text = open(v2 if os.path.exists(v2) else v1).read()
print(dict(line.split() for line in text.splitlines()).get('oom_kill', '?'), os.environ['MEM_LIMIT'])
"""


class Kernel:
    """One kernel in a user's lab, held open over its websocket the way JupyterLab does."""

    def __init__(self, user: HubUser):
        self.user = user
        resp = user.lab("POST", "/kernels", json={"name": "python3"})
        assert resp.status_code == 201, f"kernel start: {resp.status_code} {resp.text[:300]}"
        self.id = resp.json()["id"]
        url = user.kernel_channels(self.id)
        self.ws = websocket.create_connection(url, header=[f"Authorization: token {user.token}"],
                                              timeout=5)

    def run(self, code: str, timeout: float = 120) -> dict:
        """Execute ``code``; return its output, and how it ended: "idle" (the cell finished),
        "restarting"/"dead" (the server says the kernel died), "closed" (the lab is gone)."""
        request = _execute_request(code)
        self.ws.send(json.dumps(request))
        out, error = [], None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = json.loads(self.ws.recv())
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
                return {"end": "closed", "out": "".join(out), "error": error}
            kind, content = msg["header"]["msg_type"], msg.get("content", {})
            state = content.get("execution_state") if kind == "status" else None
            if state in ("restarting", "dead"):  # sent to every client, with no parent
                return {"end": state, "out": "".join(out), "error": error}
            if msg.get("parent_header", {}).get("msg_id") != request["header"]["msg_id"]:
                continue
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                error = "\n".join(content["traceback"])
            elif state == "idle":
                return {"end": "idle", "out": "".join(out), "error": error}
        raise AssertionError(f"no answer in {timeout:.0f}s to {code[:60]!r}; output: {out}")

    def output(self, code: str, timeout: float = 120) -> str:
        """Execute ``code`` and return what it printed; it must finish without an error."""
        result = wait_until(lambda: self._finished(code), timeout=timeout, interval=1,
                            what=f"{self.user.name}'s kernel to run {code[:40]!r}")
        assert result["error"] is None, result["error"]
        return result["out"]

    def _finished(self, code: str) -> dict | None:
        # Right after a restart the kernel may not answer the first request yet.
        result = self.run(code, timeout=30)
        return result if result["end"] == "idle" else None

    def close(self) -> None:
        self.ws.close()
        self.user.lab("DELETE", f"/kernels/{self.id}")


@pytest.fixture(scope="module")
def limits_stack(stack_factory, tmp_path_factory):
    """A stack whose labs may use 512M each (LAB_MEM_LIMIT), with one CPU profile."""
    profiles = tmp_path_factory.mktemp("limits") / "profiles.yaml"
    profiles.write_text(PROFILES)
    stack = stack_factory(LAB_MEM_LIMIT=LIMIT, LABS_MEM_LIMIT=TOGETHER,
                          PROFILES_FILE=str(profiles))
    stack.up("--no-build")
    return stack


def _running_lab(stack, user: HubUser) -> HubUser:
    if not user.server().get("ready"):
        user.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    return user


@pytest.fixture(scope="module")
def hog(limits_stack):
    return limits_stack.signed_up("hog")


@pytest.fixture(scope="module")
def calm(limits_stack):
    return limits_stack.signed_up("calm")


def _state(stack, user: str) -> dict:
    return stack.inspect(stack.lab_container(user))["State"]


def _oom_events(stack, since: int) -> list[dict]:
    """Docker's record of OOM kills (and deaths) in this project's labs since ``since``."""
    out = stack.docker("events", "--since", str(since), "--until", str(int(time.time()) + 1),
                       "--filter", "type=container", "--filter", "event=oom",
                       "--filter", "event=die", "--filter", f"label=gpuhub.project={stack.project}",
                       "--format", "{{json .}}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _named(events: list[dict], action: str) -> list[str]:
    return [e["Actor"]["Attributes"]["name"] for e in events if e.get("Action") == action]


def test_labs_are_limited_to_the_hosts_memory_less_a_reserve_by_default(stack):
    """LAB_MEM_LIMIT=auto, the default: the shared stack sets no limit of its own."""
    assert "LAB_MEM_LIMIT" not in stack.settings, "GPUHUB_TEST_LAB_MEM_LIMIT is set"
    host = int(stack.docker("info", "--format", "{{.MemTotal}}").stdout)
    lima = _running_lab(stack, stack.signed_up("lima"))
    try:
        memory = stack.inspect(stack.lab_container("lima"))["HostConfig"]["Memory"]
        assert memory == lablimits.memory_bytes(lablimits.auto_memory(host)), (memory, host)
        assert 0 < memory < host
    finally:
        lima.stop(logs=stack.logs)
        stack.invoke("deluser", "lima", "--purge-data")


def test_the_hubs_services_run_under_their_parent_at_sixteen_times_the_cpu_weight(stack):
    """The hub, proxy and broker are created under their own parent cgroup, which lab-memory
    keeps at 16x the default CPU weight: ahead of the labs' parent and of Docker's own
    processes, which without it keep the hub's API waiting while many labs start
    (docs/explanation/benchmark.md). Read where the kernel has their processes."""
    cpu = Path("/sys/fs/cgroup/cpu")
    if not cpu.is_dir():
        pytest.fail("this test reads cgroup v1's cpu controller, as this machine has it")
    name = f"gpuhub-{stack.project}-services"
    shares = cpu / name / "cpu.shares"
    wait_until(lambda: shares.is_file() and shares.read_text().strip() == "16384", timeout=30,
               what=f"lab-memory to keep {shares} at 16384")
    for service in ("hub", "proxy", "docker-proxy"):
        container = stack.inspect(stack.compose("ps", "-q", service, check=True).stdout.strip())
        assert container["HostConfig"]["CgroupParent"] == f"/{name}", service
        procs = cpu / name / container["Id"] / "cgroup.procs"
        assert str(container["State"]["Pid"]) in procs.read_text().split(), service
    for service in ("lab-memory", "lab-firewall"):
        container = stack.inspect(stack.compose("ps", "-q", service, check=True).stdout.strip())
        assert container["HostConfig"]["CgroupParent"] == "", service


def test_a_cell_over_the_limit_kills_only_its_own_kernel(limits_stack, hog, calm):
    stack = limits_stack
    for user in (hog, calm):
        _running_lab(stack, user)
        assert stack.inspect(stack.lab_container(user.name))["HostConfig"]["Memory"] == LIMIT_BYTES
    quiet = Kernel(calm)
    hungry = Kernel(hog)
    try:
        quiet.output("state = 'kept'")
        hungry.output("marker = 'before'")
        since = int(time.time()) - 1

        ended = hungry.run(ALLOCATE, timeout=120)

        # hog is told the kernel died (JupyterLab: "The kernel appears to have died"), and
        # the cell never finished.
        assert ended["end"] in ("restarting", "dead"), ended
        assert "allocated" not in ended["out"]
        # Docker's record: the OOM kill was in hog's lab, and in no other.
        events = _oom_events(stack, since)
        assert _named(events, "oom") and set(_named(events, "oom")) == {
            stack.lab_container("hog")}, events
        assert not _named(events, "die"), f"no lab may have died: {events}"
        hog_state, calm_state = _state(stack, "hog"), _state(stack, "calm")
        # (Docker sets OOMKilled only when the OOM kill ends the container: not here.)
        assert hog_state["Running"] and calm_state["Running"], (hog_state, calm_state)
        assert not calm_state["OOMKilled"], calm_state
        # calm's kernel never noticed; hog keeps the lab, and a fresh kernel in it.
        assert quiet.output("print(state)").strip() == "kept"
        assert hog.server().get("ready") and hog.lab("GET", "/status").status_code == 200
        # A kernel just restarted may answer the first request before this client's
        # output stream is subscribed (ZeroMQ's slow joiner): ask until it prints.
        fresh = wait_until(lambda: hungry.output("print('marker' in globals())").strip(),
                           timeout=60, interval=1, what="hog's restarted kernel to print")
        assert fresh == "False", fresh
        # Why, as hog can see it in the lab: the lab's own cgroup counts the OOM kill, and
        # MEM_LIMIT (set by JupyterHub, shown by memory indicators) says the limit.
        kills, limit = hungry.output(CGROUP_OOM_KILLS).split()
        assert int(kills) >= 1 and int(limit) == LIMIT_BYTES, (kills, limit)
    finally:
        quiet.close()
        hungry.close()


def test_a_lab_whose_server_the_oom_killer_picks_stops_alone(limits_stack, hog, calm):
    stack = limits_stack
    for user in (hog, calm):
        _running_lab(stack, user)
    quiet = Kernel(calm)
    hungry = Kernel(hog)
    try:
        quiet.output("state = 'kept'")
        # The OOM killer picks the server when it is the lab's biggest process (many
        # kernels, large outputs held). Make it so here: raising a process's
        # oom_score_adj needs no privilege, and the kernel's parent is the lab's server.
        hungry.output("import os\n"
                      "open(f'/proc/{os.getppid()}/oom_score_adj', 'w').write('1000')")
        since = int(time.time()) - 1
        ended = hungry.run(ALLOCATE, timeout=120)
        assert ended["end"] in ("closed", "restarting", "dead"), ended

        # Docker's record: hog's lab was OOM-killed and died; calm's did neither.
        wait_until(lambda: _named(_oom_events(stack, since), "die"), timeout=60, interval=1,
                   what="hog's lab to die", state=lambda: _oom_events(stack, since))
        events = _oom_events(stack, since)
        assert set(_named(events, "oom")) == {stack.lab_container("hog")}, events
        assert set(_named(events, "die")) == {stack.lab_container("hog")}, events
        died = next(e for e in events if e["Action"] == "die")
        assert died["Actor"]["Attributes"].get("exitCode") not in (None, "0"), died
        calm_state = _state(stack, "calm")
        assert calm_state["Running"] and not calm_state["OOMKilled"], calm_state
        assert quiet.output("print(state)").strip() == "kept"
        # The hub notices (within its poll interval) and frees the name for a new start.
        wait_until(lambda: not hog.server(), timeout=60, interval=1,
                   what="the hub to notice hog's lab stopped", state=hog.server, logs=stack.logs)
    finally:
        quiet.close()
        hungry.ws.close()

    # The hub kept why: in its log, on hog's home page, and in the next start's progress
    # (seen on the spawn page while that start is pending).
    reason = f"The lab of hog stopped by itself: out of memory (memory limit {LIMIT_BYTES} bytes)"
    wait_until(lambda: reason in stack.logs(tail=2000, service="hub"), timeout=30, interval=1,
               what="the hub to log why hog's lab stopped", logs=stack.logs)
    # What hog sees on coming back to the hub: why, on the home page, until the next start.
    home = hog.http.get(f"{hog.base}/hub/home", timeout=30)
    assert home.status_code == 200 and ("Your last lab stopped by itself: out of memory"
                                        in home.text), home.text[-3000:]
    hog.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    assert "gpuhub-last-stop" not in hog.http.get(f"{hog.base}/hub/home", timeout=30).text
    assert stack.docker("ps", "-aq", "--filter", "status=exited", "--filter",
                        f"name={stack.lab_container('hog')}").stdout == "", "no dead lab is left"


# 64 MiB in 1 MiB lines, written where a lab's own processes write (its server's stdout).
FLOOD = ("line = 'x' * (1024 * 1024 - 1) + '\\n'\n"
         "with open('/proc/1/fd/1', 'w') as out:\n"
         "    for _ in range(64):\n"
         "        out.write(line); out.flush()\n"
         "print('flooded')\n")


def test_a_lab_that_floods_its_log_stays_under_the_cap(stack):
    """From inside the lab (the attacker's position): 64 MiB to the lab's stdout. What
    Docker kept on the host's disk, read there, stays under LOG_FILES x LOG_MAX_SIZE."""
    flood = _running_lab(stack, stack.signed_up("flood"))
    kernel = Kernel(flood)
    try:
        info = stack.inspect(stack.lab_container("flood"))
        assert info["HostConfig"]["LogConfig"] == lablimits.LOG_CONFIG, info["HostConfig"]
        assert kernel.output(FLOOD, timeout=180).strip() == "flooded"
        log = info["LogPath"]
        kept = [f"{log}.{i}" for i in range(1, lablimits.LOG_FILES)] + [log]
        sizes = {path: os.path.getsize(path) for path in kept if os.path.exists(path)}
        cap = lablimits.LOG_FILES * lablimits.memory_bytes(lablimits.LOG_MAX_SIZE.upper())
        # Each file may end one log line (a 1 MiB line, as JSON) past its size.
        assert sum(sizes.values()) <= cap + lablimits.LOG_FILES * 2 * 1024 ** 2, sizes
        assert len(sizes) == lablimits.LOG_FILES, f"the log was not rotated: {sizes}"
    finally:
        kernel.close()
        flood.stop(logs=stack.logs)
        stack.invoke("deluser", "flood", "--purge-data")


def _labs_cgroup(stack) -> Path:
    return Path("/sys/fs/cgroup/memory") / f"gpuhub-{stack.project}-labs"


def _oom_kills_in_kernel_log(since_boot_seconds: float) -> list[str]:
    """The kernel's own record of OOM kills (dmesg) after ``since_boot_seconds``."""
    lines = subprocess.run(["dmesg"], capture_output=True, text=True, check=True).stdout
    kills = []
    for line in lines.splitlines():
        stamp = re.match(r"\[\s*(\d+\.\d+)\]", line)
        if stamp and float(stamp[1]) > since_boot_seconds and "oom-kill:" in line:
            kills.append(line)
    return kills


def test_two_labs_that_take_all_they_can_stay_under_the_labs_limit(limits_stack, hog, calm):
    """Each lab stays within its own limit, but together they go over LABS_MEM_LIMIT: the
    kernel kills inside the labs' parent cgroup only, and the hub answers throughout."""
    if not Path("/sys/fs/cgroup/memory").is_dir():
        pytest.fail("this test reads cgroup v1's memory controller, as this machine has it")
    stack = limits_stack
    for user in (hog, calm):
        _running_lab(stack, user)
        info = stack.inspect(stack.lab_container(user.name))
        assert info["HostConfig"]["CgroupParent"] == f"/gpuhub-{stack.project}-labs"
    parent = _labs_cgroup(stack)
    assert int((parent / "memory.limit_in_bytes").read_text()) == TOGETHER_BYTES
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    answers: list[int] = []
    stop = threading.Event()

    def poll_hub():
        while not stop.is_set():
            try:
                answers.append(requests.get(f"{stack.url}/hub/health", timeout=5).status_code)
            except requests.RequestException:
                answers.append(0)
            time.sleep(0.2)

    poller = threading.Thread(target=poll_hub, daemon=True)
    kernels = [Kernel(hog), Kernel(calm)]
    try:
        poller.start()
        results: dict[str, dict] = {}
        runners = [threading.Thread(target=lambda k=k: results.__setitem__(
            k.user.name, k.run(ALLOCATE_SOME, timeout=120))) for k in kernels]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join(150)
        time.sleep(2)
        # The OOM killer picks the biggest process in the labs' parent: the kernel that
        # allocated (maybe the one that finished first). It lost what it held; the lab's
        # server restarted it.
        kept = {k.user.name: wait_until(
            lambda k=k: k.output("print('chunks' in globals())").strip(), timeout=60,
            interval=1, what=f"{k.user.name}'s kernel to answer") for k in kernels}
    finally:
        stop.set()
        poller.join(10)
        for kernel in kernels:
            kernel.close()
    assert "False" in kept.values(), (kept, results)
    # The kernel kept the labs together under their limit, and killed there: every OOM
    # kill since the start was inside the labs' parent.
    assert int((parent / "memory.max_usage_in_bytes").read_text()) <= TOGETHER_BYTES
    kills = _oom_kills_in_kernel_log(uptime)
    assert kills, "the kernel recorded no OOM kill"
    outside = [k for k in kills if f"oom_memcg=/gpuhub-{stack.project}-labs" not in k]
    assert not outside, f"OOM kills outside the labs' parent: {outside}"
    # The hub answered every time; no service of the stack was restarted or killed.
    assert answers and set(answers) == {200}, answers
    for service in ("hub", "proxy", "docker-proxy", "lab-firewall", "lab-memory"):
        state = stack.inspect(stack.service_container(service))
        assert state["RestartCount"] == 0 and not state["State"]["OOMKilled"], (service, state)
    # The labs themselves keep running (a kernel was killed, not a lab).
    for user in (hog, calm):
        assert _state(stack, user.name)["Running"], user.name


def test_no_lab_starts_while_the_labs_limit_is_not_kept(limits_stack, hog):
    """lab-memory puts a changed limit back within seconds. Stopped by hand, it leaves the
    limit in place for the labs that run, and the hub starts no lab (503, and Docker records
    no container) until `invoke up` brings it back: fail closed."""
    if not Path("/sys/fs/cgroup/memory").is_dir():
        pytest.fail("this test reads cgroup v1's memory controller, as this machine has it")
    stack = limits_stack
    _running_lab(stack, hog)  # while a lab is in the parent, stopping lab-memory keeps it
    limit = _labs_cgroup(stack) / "memory.limit_in_bytes"
    assert int(limit.read_text()) == TOGETHER_BYTES
    # Something else lifts it (by hand, or a reset): lab-memory writes it back.
    limit.write_text("-1")
    assert int(limit.read_text()) > TOGETHER_BYTES, "the kernel kept the limit; nothing tested"
    wait_until(lambda: int(limit.read_text()) == TOGETHER_BYTES, timeout=30, interval=0.5,
               what="lab-memory to put the labs' limit back",
               logs=lambda: stack.logs(service="lab-memory"))
    # Stopped by hand: the limit stays (hog's lab still runs in the parent).
    stack.docker("stop", stack.service_container("lab-memory"))
    assert not stack.service_container("lab-memory")
    assert int(limit.read_text()) == TOGETHER_BYTES, "stopping lab-memory must leave the limit"
    kilo = stack.signed_up("kilo")
    refused = kilo.start({"profile": "cpu"})
    assert refused.status_code == 503, refused.text
    assert "memory limit" in refused.json()["message"], refused.text
    # Docker's record, not the hub's answer: no container was made for kilo.
    assert stack.docker("ps", "-aq", "--filter", f"name={stack.lab_container('kilo')}").stdout == ""
    assert _state(stack, "hog")["Running"], "a running lab must not be touched"
    stack.up("--no-build")  # waits until lab-memory is healthy again
    kilo.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    info = stack.inspect(stack.lab_container("kilo"))
    assert info["HostConfig"]["CgroupParent"] == f"/gpuhub-{stack.project}-labs"
    kilo.stop(logs=stack.logs)
