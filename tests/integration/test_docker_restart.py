"""The Docker daemon restarts under a running hub (disruptive: every container stops).

Runs only where GPUHUB_RESTART_DOCKER_CMD says how to restart the daemon (CI:
`bash .ci/restart-dockerd`; a systemd host: `systemctl restart docker`), in its own
pytest run after the others (`-m disruptive`), since it stops every container.
"""

import json
import os
import shlex
import subprocess

import pytest

from harness.hub import HubUser
from harness.wait import wait_until

pytestmark = pytest.mark.disruptive


@pytest.fixture(scope="module")
def restart_cmd():
    cmd = os.environ.get("GPUHUB_RESTART_DOCKER_CMD")
    if not cmd:
        pytest.fail("set GPUHUB_RESTART_DOCKER_CMD (how to restart dockerd) to run the "
                    "disruptive tests, or deselect them with -m 'not disruptive'")
    return shlex.split(cmd)


def test_after_a_daemon_restart_status_tells_the_truth_and_up_recovers(stack_factory, restart_cmd):
    stack = stack_factory()
    stack.up("--no-build")
    rita = stack.signed_up("rita")
    rita.start_ready({"profile": "gpu1"}, 120, logs=stack.logs)

    subprocess.run(restart_cmd, check=True, timeout=300)

    # The hub and proxy come back by their restart policy; the lab (no policy) does not.
    status = stack.invoke("status").stdout
    assert status.splitlines()[0].split() == ["SERVICE", "STATE", "HEALTH", "SINCE"], status
    assert "No lab is running." in status and "rita" not in status, status
    wait_until(lambda: "healthy" in stack.docker("inspect", "-f", "{{.State.Health.Status}}",
                                                  stack.compose("ps", "-q", "hub").stdout.strip(),
                                                  check=False).stdout,
               timeout=120, interval=1, what="the hub to be healthy again", logs=stack.logs)
    stack.up("--no-build")
    wait_until(lambda: not rita.server(), timeout=60, interval=1,
               what="the hub to notice rita's lab is gone", state=rita.server, logs=stack.logs)
    held = json.loads(stack.invoke("gpus", "--json").stdout)
    assert not any(row["held_by"] for row in held), held
    again = HubUser.signed_in(stack.url, "rita", "rita-pw-12345")
    again.start_ready({"profile": "gpu1"}, 120, logs=stack.logs)
    stack.teardown()
