"""GPU allocation on a real stack with the NVIDIA test double (4 fake GPUs).

CI installs the double (tests/gpu_double) and points NVIDIA_SMI at its host-side
nvidia-smi; `invoke up` then discovers 4 GPUs exactly as it would on a GPU server.
"""

import concurrent.futures
import json

import pytest

from harness.hub import HubUser
from harness.wait import wait_until

GPU_USERS = ["gpu1user", "gpu2user", "gpu3user", "gpu4user", "gpu5user"]
SPAWN_TIMEOUT = 180


def _gpus(stack) -> list[dict]:
    return json.loads(stack.invoke("gpus", "--json").stdout)


@pytest.fixture(scope="module")
def inventory(stack):
    rows = _gpus(stack)
    if len(rows) < 4:
        pytest.fail(f"these tests need 4 GPUs or the test double's 4 (NVIDIA_SMI); got {rows}")
    return rows


def _holders(rows: list[dict]) -> list[tuple]:
    """Who holds which GPU since when (utilisation and idle time change by the second)."""
    return [(r["uuid"], r["held_by"], r["since"]) for r in rows]


@pytest.fixture(scope="module")
def gpu_users(stack, inventory):
    stack.add_users({name: f"{name}-pw-12345" for name in GPU_USERS + ["latecomer"]})
    users = {name: HubUser.signed_in(stack.url, name, f"{name}-pw-12345")
             for name in GPU_USERS + ["latecomer"]}
    yield users
    for user in users.values():
        if user.server():
            user.stop(logs=stack.logs)


def _lab_view(user: HubUser) -> dict:
    return json.loads(user.run_code(
        "import subprocess; print(subprocess.run(['gpu-check', '--no-tensorflow'], "
        "capture_output=True, text=True).stdout)"))


def _seen(view: dict) -> list[str]:
    """The GPUs the driver shows inside the lab (the UUIDs of `nvidia-smi -L`): what the lab
    can use, on the legacy hook path and the CDI path alike (CDI sets the lab's
    NVIDIA_VISIBLE_DEVICES to "void", so the lab's environment says nothing)."""
    return [line.rsplit("(UUID: ", 1)[1].rstrip(")") for line in view["nvidia_smi"]["gpus"]]


def test_five_users_at_once_get_four_distinct_gpus_and_one_clear_refusal(stack, gpu_users, inventory):
    users = [gpu_users[n] for n in GPU_USERS]
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        answers = list(pool.map(lambda u: u.start({"profile": "gpu1"}), users))
    refused = [(u.name, a) for u, a in zip(users, answers) if a.status_code not in (201, 202)]
    assert len(refused) == 1, [(u.name, a.status_code, a.text) for u, a in zip(users, answers)]
    name, answer = refused[0]
    assert answer.status_code == 409
    assert "in use" in answer.json()["message"] and "CPU profile" in answer.json()["message"]
    assert stack.docker("ps", "-aq", "--filter", f"name={stack.lab_container(name)}").stdout == "", \
        "a refused spawn must leave no container behind"

    granted = {}
    for user in users:
        if user.name == name:
            continue
        user.wait_ready(SPAWN_TIMEOUT, logs=stack.logs)
        view = _lab_view(user)
        env_ids = _seen(view)
        assert len(env_ids) == 1 and view["granted"] == env_ids, view
        info = stack.inspect(stack.lab_container(user.name))
        env = dict(e.split("=", 1) for e in info["Config"]["Env"])
        assert env["NVIDIA_VISIBLE_DEVICES"] == env_ids[0]
        assert info["Config"]["Labels"]["gpuhub.gpus"] == env_ids[0]
        requests_ = info["HostConfig"]["DeviceRequests"]
        assert requests_ and requests_[0]["DeviceIDs"] == env_ids, requests_
        granted[user.name] = env_ids[0]
    assert len(set(granted.values())) == 4, granted
    assert set(granted.values()) == {row["uuid"] for row in inventory}

    holders = {row["uuid"]: row["held_by"] for row in _gpus(stack)}
    assert holders == {gpu: [user] for user, gpu in granted.items()}


def test_stopping_a_lab_frees_its_gpu_for_the_waiting_user(stack, gpu_users):
    running = [u for u in gpu_users.values() if u.server().get("ready")]
    waiting = [gpu_users[n] for n in GPU_USERS if not gpu_users[n].server()]
    assert len(running) == 4 and len(waiting) == 1
    leaver, waiter = running[0], waiting[0]
    freed = stack.inspect(stack.lab_container(leaver.name))["Config"]["Labels"]["gpuhub.gpus"]
    leaver.stop(logs=stack.logs)
    waiter.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=stack.logs)
    assert _seen(_lab_view(waiter)) == [freed]


def test_hub_restart_keeps_holders_and_never_double_books(stack, gpu_users):
    before = _gpus(stack)
    assert all(row["held_by"] for row in before), before
    stack.invoke("restart")
    assert _holders(_gpus(stack)) == _holders(before)
    late = gpu_users["latecomer"]
    late.login("latecomer-pw-12345")
    late.create_token()
    answer = late.start({"profile": "gpu1"})
    assert answer.status_code == 409, answer.text
    # A CPU lab still starts while every GPU is held.
    late.start_ready({"profile": "cpu"}, SPAWN_TIMEOUT, logs=stack.logs)
    assert _seen(_lab_view(late)) == []
    late.stop(logs=stack.logs)


def test_a_lab_that_dies_frees_its_gpu_at_once(stack, gpu_users):
    victim = next(u for u in gpu_users.values() if u.server().get("ready"))
    container = stack.lab_container(victim.name)
    freed = stack.inspect(container)["Config"]["Labels"]["gpuhub.gpus"]
    stack.docker("kill", container)
    late = gpu_users["latecomer"]
    # Docker is the record: the dead lab's GPU is free before the hub even polls it.
    late.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=stack.logs)
    assert _seen(_lab_view(late)) == [freed]
    late.stop(logs=stack.logs)


def test_admin_gpu_page_shows_holders_and_refuses_non_admins(stack, gpu_users):
    admin = HubUser(stack.url, "admin")
    admin.login(stack.admin_passwords["admin"])
    expected = _holders(_gpus(stack))

    def on_page():  # the hub's board refreshes every GPU_SAMPLE_INTERVAL: one may be due
        page = admin.http.get(f"{stack.url}/hub/gpus?format=json", timeout=30)
        assert page.status_code == 200, page.text[:500]
        return _holders(page.json()["rows"]) == expected

    wait_until(on_page, timeout=20, interval=1, what=f"the admin page's holders {expected}",
               logs=stack.logs)
    html = admin.http.get(f"{stack.url}/hub/gpus", timeout=30)
    assert 'id="gpu-table"' in html.text and "Tesla T4" in html.text
    plain = HubUser(stack.url, "latecomer")
    plain.login("latecomer-pw-12345")
    refused = plain.http.get(f"{stack.url}/hub/gpus?format=json", timeout=30)
    assert refused.status_code == 403, (refused.status_code, refused.text[:300])


@pytest.mark.parametrize("options", [
    {"profile": "gpu9"},
    {"image": "some/other:image"},
    {"profile": "gpu1", "mem_limit": "500G"},
    {"profile": ["gpu1"]},
], ids=["unknown-profile", "image", "extra-field", "not-a-string"])
def test_tampered_spawn_requests_are_rejected(stack, gpu_users, options):
    late = gpu_users["latecomer"]
    answer = late.start(options)
    assert answer.status_code == 400, answer.text
    assert not late.server()
