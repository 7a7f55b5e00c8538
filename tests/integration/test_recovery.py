"""Recovery: one `invoke up` (or `invoke restart`) brings a broken stack back, labs kept.

Each case breaks one service of the shared stack while a GPU lab runs: "exited" is
`docker kill` (Docker then leaves it down, as after a crash it gave up on), "stopped" is
`docker stop`. Afterwards every service runs, the lab is the same container, its user
still holds the same GPU and reaches the lab through the proxy.
"""

from __future__ import annotations

import json

import pytest

from harness.wait import wait_until

SERVICES = ("hub", "proxy", "docker-proxy", "lab-firewall")


@pytest.fixture(scope="module")
def rosa(stack):
    user = stack.signed_up("rosa")
    user.start_ready({"profile": "gpu1"}, 180, logs=stack.logs)
    yield user
    if user.server():
        user.stop(logs=stack.logs)


def _running(stack) -> set[str]:
    return set(stack.compose("ps", "--status", "running", "--services").stdout.split())


def _holders(stack) -> dict[str, list[str]]:
    rows = json.loads(stack.invoke("gpus", "--json").stdout)
    return {row["uuid"] or row["gpu"]: row["held_by"] for row in rows if row["held_by"]}


@pytest.mark.parametrize(("service", "how", "task"), [
    ("hub", "kill", "up"),
    ("hub", "stop", "up"),
    ("hub", "stop", "restart"),
    ("proxy", "kill", "up"),
    ("docker-proxy", "kill", "up"),
], ids=["hub exited, up", "hub stopped, up", "hub stopped, restart", "proxy exited, up",
        "docker-proxy exited, up"])
def test_one_task_brings_the_stack_back_with_its_labs(stack, rosa, service, how, task):
    lab = stack.inspect(stack.lab_container("rosa"))["Id"]
    held = _holders(stack)
    assert ["rosa"] in held.values(), held
    stack.docker(how, stack.compose("ps", "-q", service).stdout.strip())
    wait_until(lambda: service not in _running(stack), timeout=30, interval=0.5,
               what=f"{service} to be down", state=lambda: _running(stack))
    # What the admin sees of the broken stack: the service down, the lab still there.
    services, labs = stack.invoke("status").stdout.split("\n\n")
    states = {line.split()[0]: line.split()[1] for line in services.splitlines()[1:]}
    assert states[service] == "exited" and states["hub" if service != "hub" else "proxy"] == (
        "running"), services
    lab_rows = {line.split()[0]: line.split() for line in labs.splitlines()[1:]}
    assert lab_rows["rosa"][1:3] == ["gpu1", next(g for g, h in held.items() if h == ["rosa"])], (
        labs)
    if service == "hub":  # a task that needs the hub names the fix, which works (below)
        refused = stack.invoke("users", check=False)
        assert refused.returncode == 1 and "start it with `invoke up`" in refused.stderr, (
            refused.stderr)

    result = stack.invoke(*((task, "--no-build") if task == "up" else (task,)))
    assert "gpuhub is up" in result.stdout, result.stdout + result.stderr
    # The GPUs in a few words (the test double's four T4s); the UUIDs are for `invoke gpus`.
    rows = json.loads(stack.invoke("gpus", "--json").stdout)
    assert [row["model"] for row in rows] == ["Tesla T4"] * 4, rows
    up_line = next(line for line in result.stdout.splitlines() if "gpuhub is up" in line)
    assert "(4 GPUs (4× Tesla T4)" in up_line, up_line
    assert not any(row["uuid"] in result.stdout for row in rows), result.stdout

    assert _running(stack) >= set(SERVICES), _running(stack)
    info = stack.inspect(stack.lab_container("rosa"))
    assert (info["Id"], info["State"]["Running"]) == (lab, True), "the lab must be kept"
    assert _holders(stack) == held
    assert rosa.server()["ready"], rosa.server()
    # Through the proxy, to the same lab: its routes are back.
    wait_until(lambda: rosa.run_code("print(6 * 7)").strip() == "42", timeout=60, interval=2,
               what="rosa's lab to answer through the proxy", logs=stack.logs)
