"""GPU faults on a real stack: the NVIDIA double fails starts where the real toolkit does,
and gpuhub takes the faulty GPU out of service, gives the user another with one line,
shows it to the admin (`invoke gpus`, the GPU page, the metrics) and brings it back.

Before this, the double never failed a start and the hub handed the same dead GPU to every
new start (exclusive), with Docker's raw OCI error for the user: each test here fails on
that behaviour. The faults are the double's state file (tests/support/gpu_state.py), which
every GPU container reads, so each test clears it and waits until every GPU is back.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from harness.hub import HubUser
from harness.wait import wait_until
from support import gpu_state

SPAWN_TIMEOUT = 180
NAME = "faultuser"
PASSWORD = "faultuser-pw-12345"
UNKNOWN = "the NVIDIA driver does not know this device"


def board(stack) -> list[dict]:
    return json.loads(stack.invoke("gpus", "--json").stdout)


def row_of(rows: list[dict], uuid: str) -> dict:
    return next(r for r in rows if r["uuid"] == uuid)


def metrics(stack) -> str:
    token = (stack.workdir / "secrets" / f"{stack.project}-metrics-token").read_text().strip()
    answer = requests.get(f"{stack.url}/hub/metrics", timeout=30,
                          headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text[:300]
    return answer.text


def out_of_service_metric(stack, uuid: str) -> float | None:
    for line in metrics(stack).splitlines():
        if line.startswith("gpuhub_gpu_out_of_service{") and f'uuid="{uuid}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def all_in_service(stack) -> None:
    wait_until(lambda: all(not r.get("out_of_service") for r in board(stack)), timeout=60,
               interval=1, what="every GPU back in service", state=lambda: board(stack),
               logs=stack.logs)


@pytest.fixture(scope="module")
def person(stack):
    return stack.signed_up(NAME, PASSWORD)


@pytest.fixture
def user(stack, person):
    """faultuser, logged in, with no lab; afterwards: no fault, no lab, every GPU back."""
    yield person
    gpu_state.clear()
    if person.server():
        person.stop(logs=stack.logs)
    all_in_service(stack)


def first_free(stack) -> dict:
    """The GPU the exclusive policy hands out next: the first free one in inventory order."""
    return next(r for r in board(stack) if not r["holders"] and not r.get("out_of_service"))


def start_and_follow(user: HubUser, profile: str) -> tuple[requests.Response, list[str]]:
    """Start ``profile``: the hub's answer, and every progress message until the lab is
    ready or failed, read as the progress page does, while the start runs (the hub answers
    the start's POST only once the lab is ready or failed, or after 10 s: too late to see
    its progress)."""
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(user.start, {"profile": profile})
        messages: list[str] = []
        while not messages and not (answer.done() and not user.server().get("pending")):
            messages = user.progress_messages(until="\0", timeout=SPAWN_TIMEOUT)
        return answer.result(), messages


def test_a_gpu_the_driver_no_longer_sees_goes_out_of_service_and_the_user_gets_another(
        stack, user):
    """The GPU was replaced or removed after `invoke up` listed it: the toolkit calls it an
    unknown device and fails the start. The user gets the next GPU and one line about it."""
    dead = first_free(stack)
    gpu_state.write({}, gone=[dead["uuid"]])
    answer, messages = start_and_follow(user, "gpu1")
    assert answer.status_code in (201, 202), answer.text
    user.wait_ready(SPAWN_TIMEOUT, logs=stack.logs)
    note = (f"GPU {dead['uuid']} is out of service: {UNKNOWN}; you are next in line for "
            "another")
    assert note in messages, messages
    assert not any("OCI" in m for m in messages), messages
    lab = stack.inspect(stack.lab_container(NAME))
    granted = lab["Config"]["Labels"]["gpuhub.gpus"]
    assert granted and granted != dead["uuid"]
    listed = stack.docker("exec", lab["Id"], "nvidia-smi", "-L").stdout
    assert granted in listed and dead["uuid"] not in listed, listed

    # The admin's views: `invoke gpus` (table and JSON), the GPU page's data, the metric.
    row = row_of(board(stack), dead["uuid"])
    assert row["out_of_service"]["reason"] == UNKNOWN and row["holders"] == []
    table = stack.invoke("gpus").stdout
    assert "OUT OF SERVICE" in table and f"GPU {dead['gpu']} is out of service since" in table
    admin = HubUser(stack.url, "admin")
    admin.login(stack.admin_passwords["admin"])
    wait_until(lambda: row_of(admin.http.get(f"{stack.url}/hub/gpus?format=json",
                                             timeout=30).json()["rows"],
                              dead["uuid"]).get("out_of_service"),
               timeout=20, interval=1, what="the GPU page to show the GPU out of service",
               logs=stack.logs)
    assert out_of_service_metric(stack, dead["uuid"]) == 1
    assert out_of_service_metric(stack, granted) == 0

    # Still gone: it stays out (the sampler does not read it)...
    user.stop(logs=stack.logs)
    answer, messages = start_and_follow(user, "gpu1")
    assert answer.status_code in (201, 202), answer.text
    user.wait_ready(SPAWN_TIMEOUT, logs=stack.logs)
    assert not any("out of service" in m for m in messages), messages  # not handed out
    assert row_of(board(stack), dead["uuid"])["out_of_service"]
    # ...until an admin brings it back.
    back = stack.invoke("gpus", "--back", dead["gpu"]).stdout
    assert f"GPU {dead['gpu']} ({dead['uuid']}) is back in service" in back, back
    assert row_of(board(stack), dead["uuid"]).get("out_of_service") is None
    again = stack.invoke("gpus", "--back", dead["gpu"]).stdout
    assert "in service already" in again
    missing = stack.invoke("gpus", "--back", "GPU-not-here", check=False)
    assert missing.returncode != 0 and "has no GPU 'GPU-not-here'" in missing.stderr


def test_a_gpu_that_reads_healthy_again_comes_back_by_itself(stack, user):
    dead = first_free(stack)
    gpu_state.write({}, gone=[dead["uuid"]])
    user.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=stack.logs)
    assert row_of(board(stack), dead["uuid"])["out_of_service"]
    gpu_state.clear()  # the driver sees it again: the sampler reads it
    wait_until(lambda: row_of(board(stack), dead["uuid"]).get("out_of_service") is None,
               timeout=30, interval=1, what="the GPU back once the sampler reads it",
               state=lambda: row_of(board(stack), dead["uuid"]), logs=stack.logs)


def test_a_lost_gpu_fails_every_gpu_start_and_the_user_gets_one_line(stack, user):
    """A GPU falls off the bus: the real toolkit then fails every GPU container (it
    enumerates all GPUs). The sampler's reading takes the GPU out of service; a GPU start
    fails with one line naming the driver's words and the GPU; the CPU profile works; when
    the GPU reads healthy again it comes back and GPU labs start again."""
    # The hub watches the sampler's readings from its first start (or lab poll) on.
    user.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    user.stop(logs=stack.logs)
    lost = board(stack)[-1]
    gpu_state.write({}, lost=[lost["uuid"]])
    wait_until(lambda: (row_of(board(stack), lost["uuid"]).get("out_of_service") or {}).get(
        "reason", "").startswith("nvidia-smi cannot read it"), timeout=60, interval=1,
        what="the lost GPU out of service from the sampler's reading",
        state=lambda: row_of(board(stack), lost["uuid"]), logs=stack.logs)

    # What the user reads: the hub's answer (the API) and the progress page's last line.
    answer, messages = start_and_follow(user, "gpu1")
    assert answer.status_code == 503, answer.text
    failed = answer.json()["message"]
    assert not messages or failed in messages[-1], messages
    assert 'the NVIDIA driver reports "nvml error: unknown error"' in failed, messages
    assert f"GPU {lost['uuid']} is out of service: nvidia-smi cannot read it" in failed
    assert "OCI" not in failed and "the CPU profile still works" in failed
    assert 'gpuhub_spawns_refused_total{reason="gpu_fault"}' in metrics(stack)
    wait_until(lambda: not user.server(), timeout=30, what="the failed start to end",
               logs=stack.logs)
    user.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    user.stop(logs=stack.logs)

    gpu_state.clear()
    all_in_service(stack)
    user.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=stack.logs)


def test_a_gpu_in_error_after_an_xid_is_out_of_service_until_it_reads_healthy(stack, user):
    """After an Xid a GPU stays listed but reads "[GPU requires reset]", and CUDA cannot use
    it, while a container start still works: a lab given it would run on the CPU, silently.
    The sampler marks it, the hub takes it out with that reason and hands out another GPU;
    it comes back by itself once it reads healthy. (Before, the reading counted as healthy.)"""
    user.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)  # the hub watches
    user.stop(logs=stack.logs)
    dead = first_free(stack)
    gpu_state.write({}, reset=[dead["uuid"]])
    wait_until(lambda: row_of(board(stack), dead["uuid"]).get("out_of_service"), timeout=60,
               interval=1, what="the GPU in error out of service from the sampler's reading",
               state=lambda: row_of(board(stack), dead["uuid"]), logs=stack.logs)
    reason = row_of(board(stack), dead["uuid"])["out_of_service"]["reason"]
    assert reason == (f"GPU {dead['gpu']} needs a reset (it reads [GPU requires reset]; an Xid: "
                      "see the host's kernel log)"), reason
    wait_until(lambda: out_of_service_metric(stack, dead["uuid"]) == 1, timeout=20, interval=1,
               what="the metric (the board is read every 5 s)", logs=stack.logs)

    user.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=stack.logs)
    granted = stack.inspect(stack.lab_container(NAME))["Config"]["Labels"]["gpuhub.gpus"]
    assert granted and granted != dead["uuid"]
    user.stop(logs=stack.logs)

    gpu_state.clear()
    wait_until(lambda: row_of(board(stack), dead["uuid"]).get("out_of_service") is None,
               timeout=30, interval=1, what="the GPU back once it reads healthy",
               state=lambda: row_of(board(stack), dead["uuid"]), logs=stack.logs)


# --- driver states: the sampler, the hub, `invoke up` ----------------------------------------


def reading(stack) -> dict:
    out = stack.compose("exec", "-T", "hub", "cat", "/srv/gpuhub-telemetry/gpus.json")
    return json.loads(out.stdout)


def sampler(stack) -> dict:
    return stack.inspect(stack.compose("ps", "-q", "gpu-sampler").stdout.strip())


def read_until(stack, check, what: str, timeout: float = 60) -> dict:
    return wait_until(lambda: (lambda r: r if check(r) else None)(reading(stack)),
                      timeout=timeout, interval=1, what=what, state=lambda: reading(stack),
                      logs=stack.logs)


@pytest.fixture
def healthy_again(stack):
    """Afterwards: no fault, the sampler reading every GPU, every GPU back in service."""
    yield
    gpu_state.clear()
    read_until(stack, lambda r: not r["error"] and len(r["gpus"]) == len(board(stack)),
               "a clean reading of every GPU")
    all_in_service(stack)


def test_a_corrupted_inforom_keeps_the_readings(stack, healthy_again):
    """rc 14 with valid data (a corrupted infoROM): every GPU is read, the error is said."""
    uuid = board(stack)[0]["uuid"]
    gpu_state.write({uuid: (33, 512)}, inforom=[uuid])
    taken = read_until(stack, lambda r: r["error"].startswith("nvidia-smi exited 14"),
                       "the reading of rc 14")
    assert {g["uuid"]: g["utilisation"] for g in taken["gpus"]}[uuid] == 33
    assert len(taken["gpus"]) == len(board(stack))


def test_a_hung_driver_costs_readings_not_the_sampler(stack, healthy_again):
    gpu_state.write({}, driver="hang")
    read_until(stack, lambda r: "did not answer within" in r["error"], "the time limit said")
    gpu_state.clear()
    read_until(stack, lambda r: not r["error"] and r["gpus"], "readings again after the hang")


def test_a_driver_library_mismatch_is_said_in_full_and_refuses_gpu_starts(stack, user,
                                                                        healthy_again):
    """After a driver upgrade without a reboot: the sampler keeps both lines of the driver's
    words (on stdout, which it once ignored), GPU starts get the one-line refusal, and
    `invoke up` fails loudly instead of turning the server CPU-only; the running hub is
    untouched."""
    gpu_state.write({}, driver="mismatch")
    words = "Failed to initialize NVML: Driver/library version mismatch; NVML library version: 570.124"
    read_until(stack, lambda r: r["error"] == f"nvidia-smi failed: {words}", "the mismatch read")
    answer, _ = start_and_follow(user, "gpu1")
    assert answer.status_code == 503, answer.text
    assert '"nvml error: driver/library version mismatch"' in answer.json()["message"]
    wait_until(lambda: not user.server(), timeout=30, what="the failed start to end",
               logs=stack.logs)
    up = stack.invoke("up", "--no-build", check=False)
    assert up.returncode != 0
    assert f"nvidia-smi failed ({words})" in up.stderr and "GPU_DEVICES=none" in up.stderr
    assert requests.get(f"{stack.url}/hub/api", timeout=10).status_code == 200


def test_a_sampler_that_lost_nvml_is_restarted_and_reads_again(stack, healthy_again):
    """`systemctl daemon-reload` revokes the devices of running containers (the double:
    those started before it). After three such reads the sampler exits; Docker restarts it,
    and the new container reads the GPUs while the old one never would again."""
    before = sampler(stack)
    gpu_state.write({}, driver="nvml-lost")
    wait_until(lambda: sampler(stack)["State"]["StartedAt"] != before["State"]["StartedAt"],
               timeout=90, interval=1, what="the sampler restarted by Docker",
               state=lambda: sampler(stack)["State"], logs=stack.logs)
    taken = read_until(stack, lambda r: not r["error"] and r["gpus"],
                       "readings from the restarted sampler")
    assert len(taken["gpus"]) == len(board(stack))
    assert sampler(stack)["Id"] == before["Id"]  # restarted, not recreated
