"""GPU telemetry on a real stack: the gpu-sampler reads the test double's scripted GPUs,
the hub's page, `invoke gpus`, the metrics (scraped by a real Prometheus) and the
GPU-hours records show it with the right holders.

The double's state file is the host's (tests/support/gpu_state.py): every GPU container,
the sampler included, sees it, so these tests put it back to "all idle" when they end.
"""

from __future__ import annotations

import json

import pytest
import requests

from harness.hub import HubUser
from harness.wait import wait_until
from support import gpu_state
from support.prometheus import query

SPAWN_TIMEOUT = 180
NAME = "teleuser"
PASSWORD = "teleuser-pw-12345"


@pytest.fixture(scope="module")
def gpu_lab(stack):
    """teleuser's 1-GPU lab: (user, its GPU's UUID, the lab container's inspect)."""
    user = stack.signed_up(NAME, PASSWORD)
    user.start_ready({"profile": "gpu1"}, SPAWN_TIMEOUT, logs=stack.logs)
    info = stack.inspect(stack.lab_container(NAME))
    yield user, info["Config"]["Labels"]["gpuhub.gpus"], info
    gpu_state.clear()
    if user.server():
        user.stop(logs=stack.logs)


@pytest.fixture(scope="module")
def admin(stack):
    user = HubUser(stack.url, "admin")
    user.login(stack.admin_passwords["admin"])
    return user


def board(stack) -> list[dict]:
    return json.loads(stack.invoke("gpus", "--json").stdout)


def row_of(rows: list[dict], uuid: str) -> dict:
    return next(r for r in rows if r["uuid"] == uuid)


def samples_file(stack) -> dict:
    out = stack.compose("exec", "-T", "hub", "cat", "/srv/gpuhub-telemetry/gpus.json")
    return json.loads(out.stdout)


def test_the_sampler_reports_what_the_gpu_reports_with_its_holder(stack, gpu_lab, admin):
    user, uuid, info = gpu_lab
    pid = info["State"]["Pid"]  # the lab's main process, as the host sees it
    gpu_state.write({uuid: (85, 9216)}, [(uuid, pid, 9000, "python")])

    def sampled():
        row = row_of(board(stack), uuid)
        return row if row["utilisation"] == 85 else None

    row = wait_until(sampled, timeout=60, interval=1, what="85 % on the lab's GPU",
                     state=lambda: board(stack), logs=stack.logs)
    assert row["memory_used_mib"] == 9216 and row["memory_mib"] == 15360
    assert row["holders"] == [{"user": NAME, "profile": "gpu1",
                               "since": info["Config"]["Labels"]["gpuhub.since"],
                               "memory_used_mib": 9216}]
    assert row["idle_seconds"] == 0
    others = [r for r in board(stack) if r["uuid"] != uuid]
    assert all(r["utilisation"] == 0 for r in others), others
    # The process is the lab's: the sampler found its container from the host's PID.
    processes = samples_file(stack)["processes"]
    assert [(p["gpu_uuid"], p["pid"], p["used_mib"], p["container"]) for p in processes] == [
        (uuid, pid, 9000, info["Id"])]

    # The admin page's data is the same table, from the hub's board, which refreshes every
    # GPU_SAMPLE_INTERVAL (2 s here): it may be one refresh behind `invoke gpus`.
    def on_page():
        page = admin.http.get(f"{stack.url}/hub/gpus?format=json", timeout=30)
        assert page.status_code == 200, page.text[:300]
        return page.json() if row_of(page.json()["rows"], uuid)["utilisation"] == 85 else None

    page = wait_until(on_page, timeout=20, interval=1, what="85 % on the admin page",
                      logs=stack.logs)
    assert row_of(page["rows"], uuid)["holders"] == row["holders"]
    assert page["labs_per_profile"].get("gpu1", 0) >= 1


def test_one_lost_gpu_costs_only_its_own_readings(stack, gpu_lab):
    """One GPU falls off the bus (the double's "lost" fault: nvidia-smi prints the real
    message in its place and exits 15). The sampler keeps reading the others, the lab's
    GPU included, and says what is wrong; before, any non-zero exit dropped every GPU."""
    user, uuid, info = gpu_lab
    lost = next(r["uuid"] for r in board(stack) if r["uuid"] != uuid)
    gpu_state.write({uuid: (61, 2048)}, lost=[lost])
    try:
        def sampled():
            taken = samples_file(stack)
            read = {g["uuid"]: g["utilisation"] for g in taken["gpus"]}
            return taken if read.get(uuid) == 61 else None

        taken = wait_until(sampled, timeout=60, interval=1, what="61 % on the lab's GPU "
                           "while another GPU is lost", state=lambda: samples_file(stack),
                           logs=stack.logs)
        assert lost not in {g["uuid"] for g in taken["gpus"]}
        assert len(taken["gpus"]) == len(board(stack)) - 1, taken["gpus"]
        assert taken["error"].startswith("nvidia-smi exited 15: Unable to determine the "
                                         "device handle for GPU"), taken["error"]
        assert row_of(board(stack), uuid)["utilisation"] == 61
    finally:
        gpu_state.clear()
        # The hub took the lost GPU out of service from that reading: back before the
        # next test hands GPUs out.
        wait_until(lambda: all(not r.get("out_of_service") for r in board(stack)),
                   timeout=60, interval=1, what="every GPU back in service",
                   state=lambda: board(stack), logs=stack.logs)


def test_the_lab_has_nvidias_gpu_dashboards_which_degrade_cleanly_on_the_double(stack, gpu_lab):
    user, _, _ = gpu_lab

    def lab_get(path: str) -> requests.Response:
        return requests.get(f"{user.lab_url().rstrip('/')}{path}", timeout=60, allow_redirects=False,
                            headers={"Authorization": f"token {user.token}"})

    page = lab_get("/lab")
    assert page.status_code == 200 and '"jupyterlab-nvdashboard"' in page.text  # installed
    check = lab_get("/nvdashboard/accelerators/check")
    assert check.status_code == 200, check.text[:300]
    # The double fakes nvidia-smi, not NVIDIA's driver library: no GPU to show, and the
    # lab's server works as before (tests/e2e/test_lab.py checks real GPUs on a runner).
    assert check.json()["ngpus"] == 0 and check.json()["has_gpu"] is False
    assert user.run_code("print(6 * 7)").strip() == "42"


def test_an_idle_gpu_counts_its_idle_time(stack, gpu_lab):
    user, uuid, _ = gpu_lab
    gpu_state.write({uuid: (0, 300)})
    # This reading, not the last test's: the GPU may have been idle (0 %) since then.
    row = wait_until(lambda: (r := row_of(board(stack), uuid))["memory_used_mib"] == 300
                     and r["idle_seconds"] >= 4 and r,
                     timeout=60, interval=1, what="idle time on the lab's GPU",
                     state=lambda: row_of(board(stack), uuid), logs=stack.logs)
    assert row["utilisation"] == 0 and row["memory_used_mib"] == 300
    text = stack.invoke("gpus").stdout
    line = next(ln for ln in text.splitlines() if NAME in ln)
    assert "0 %" in line and "300 / 15360 MiB" in line, text


def test_the_gpu_page_is_for_admins_only(stack, gpu_lab, admin):
    user, _, _ = gpu_lab
    html = admin.http.get(f"{stack.url}/hub/gpus", timeout=30)
    assert html.status_code == 200
    assert 'id="gpu-table"' in html.text and 'href="/hub/gpus"' in html.text
    assert user.http.get(f"{stack.url}/hub/gpus?format=json", timeout=30).status_code == 403
    anonymous = requests.get(f"{stack.url}/hub/gpus?format=json", timeout=30,
                             allow_redirects=False)
    assert anonymous.status_code == 302 and "/hub/login" in anonymous.headers["Location"]


def test_the_spawn_form_says_how_many_gpus_are_free(stack, gpu_lab):
    held = sum(1 for r in board(stack) if r["held_by"])
    assert held >= 1  # teleuser's lab
    stack.invoke("adduser", "formuser", "--password-stdin", stdin="formuser-pw-12345\n")
    other = HubUser(stack.url, "formuser")
    other.login("formuser-pw-12345")
    form = other.http.get(f"{stack.url}/hub/spawn", timeout=30).content.decode()
    assert f"<strong>1 GPU</strong> — {4 - held} of 4 free" in form, form[-2000:]
    assert "(1 GPU)" not in form


def test_prometheus_scrapes_gpu_use_holders_and_spawns(stack, gpu_lab, prometheus):
    url, log = prometheus
    user, uuid, _ = gpu_lab
    gpu_state.write({uuid: (73, 4096)})
    # A refused start (a profile that does not exist), counted by reason.
    other = stack.signed_up("refused")
    refused = other.start({"profile": "no-such-profile"})
    assert refused.status_code == 400, refused.text

    def scraped():
        util = query(url, f'gpuhub_gpu_utilisation_percent{{uuid="{uuid}"}}')
        return util if util and util[0]["value"][1] == "73" else None

    wait_until(scraped, timeout=90, interval=1, what="Prometheus has the lab's GPU at 73 %",
               state=lambda: query(url, "up"), logs=lambda: log.read_text()[-3000:])
    [up] = query(url, f'up{{job="gpuhub-{stack.project}"}}')
    assert up["value"][1] == "1"
    memory = query(url, f'gpuhub_gpu_memory_used_bytes{{uuid="{uuid}"}}')
    assert float(memory[0]["value"][1]) == 4096 * 1024 * 1024
    holders = query(url, f'gpuhub_gpu_holder{{uuid="{uuid}"}}')
    assert [(h["metric"]["user"], h["metric"]["profile"]) for h in holders] == [(NAME, "gpu1")]
    assert query(url, 'gpuhub_labs_running{profile="gpu1"}')
    assert query(url, 'gpuhub_spawn_duration_seconds_count{profile="gpu1"} >= 1')
    assert query(url, 'gpuhub_spawns_refused_total{reason="bad_profile"} >= 1')
    assert query(url, "gpuhub_gpu_sampler_up == 1")


def test_metrics_need_the_metrics_token(stack, gpu_lab):
    user, _, _ = gpu_lab
    assert requests.get(f"{stack.url}/hub/metrics", timeout=30).status_code == 403
    # A user's own token lacks read:metrics.
    assert user.api("GET", "/metrics").status_code == 403
    token = (stack.workdir / "secrets" / f"{stack.project}-metrics-token").read_text().strip()
    ok = requests.get(f"{stack.url}/hub/metrics", timeout=30,
                      headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and "gpuhub_gpu_sampler_up" in ok.text


def test_gpu_hours_are_recorded_and_survive_a_hub_crash(stack, gpu_lab):
    user, uuid, info = gpu_lab
    usage = stack.invoke("usage", "--csv").stdout
    rows = {(r.split(",")[0], r.split(",")[1]): r.split(",") for r in usage.splitlines()[1:]}
    assert float(rows[("user", NAME)][4]) > 0, usage  # GPU-hours of the running lab
    # The hub crashes (SIGKILL; `docker kill` so that Docker does not restart it at
    # once), and while it is down the lab stops. Docker records when.
    hub = stack.compose("ps", "-q", "hub").stdout.strip()
    stack.docker("kill", hub)
    stack.docker("stop", "-t", "1", info["Id"])
    finished = stack.inspect(info["Id"])["State"]["FinishedAt"]
    stack.up("--no-build")
    journal = stack.compose("exec", "-T", "hub", "cat", "/srv/jupyterhub/data/usage.jsonl").stdout
    events = [json.loads(line) for line in journal.splitlines() if line.strip()]
    mine = [e for e in events if e["lab"] == info["Id"]]
    assert mine[0]["event"] == "start" and mine[0]["user"] == NAME and mine[0]["gpus"] == [uuid]
    stop = next(e for e in mine if e["event"] == "stop")
    assert stop["reason"].startswith("stopped while the hub was down"), stop
    assert stop["at"][:19] == finished[:19], (stop, finished)
    after = stack.invoke("usage", "--csv").stdout
    assert f"user,{NAME},1," in after, after
