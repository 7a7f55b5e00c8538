"""Load: 20 users log in and press Start at the same moment (4 fake GPUs), with the line
for GPUs on (gpuhub's default).

12 ask for a GPU and 8 for the CPU profile: every one must end with a ready lab or a
place in line (the 8 GPU users beyond the 4 GPUs), nothing lost, and the hub API must keep
answering fast through the storm and while the 8 wait with their progress streams open.
"""

from __future__ import annotations

import concurrent.futures
import statistics
import threading
import time

import requests

from harness.hub import HubUser

SPAWN_TIMEOUT = 180
# A user's thread: logins and the start (30-60 s request timeouts), the line's progress
# stream and the wait for a ready lab (SPAWN_TIMEOUT each). Past this, it hangs: a failure.
STORM_DEADLINE = 2 * SPAWN_TIMEOUT + 120
PROBE_DEADLINE = 15  # after the storm: the prober's last request (10 s timeout) and sleep
GPU_USERS = [f"load{i:02d}" for i in range(12)]
CPU_USERS = [f"load{i:02d}" for i in range(12, 20)]


def _percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _gather(futures: dict[concurrent.futures.Future, str], deadline: float, what: str) -> dict:
    """Each thread's result, in the test's own thread. An assert in a thread cannot fail the
    test: here a thread's failed check or error, and a thread not done by ``deadline``
    seconds, fail it, all of them named."""
    done, not_done = concurrent.futures.wait(futures, timeout=deadline)
    problems = [f"{futures[f]}: did not finish within {deadline:.0f} s" for f in not_done]
    first_error = None
    results = {}
    for future in done:
        error = future.exception()
        if error is None:
            results[futures[future]] = future.result()
        else:
            first_error = first_error or error
            problems.append(f"{futures[future]}: {type(error).__name__}: {error}")
    if problems:
        raise AssertionError(f"{what}: {len(problems)} of {len(futures)} failed\n"
                             + "\n".join(sorted(problems))) from first_error
    return results


def test_twenty_users_start_at_once(stack_factory, measure):
    stack = stack_factory()
    stack.up("--no-build")
    try:
        storm(stack, measure)
    finally:  # twelve labs left running would load every later test
        stack.teardown()


def storm(stack, measure) -> None:
    stack.add_users({name: f"{name}-pw-12345" for name in GPU_USERS + CPU_USERS})
    admin = HubUser.signed_in(stack.url, "admin", stack.admin_passwords["admin"])

    storm_over = threading.Event()

    def probe_api() -> list[float]:  # checked in the test's thread, through _gather
        latencies = []
        while not storm_over.is_set():
            started = time.monotonic()
            answer = requests.get(f"{stack.url}/hub/api/users/admin", timeout=10,
                                  headers={"Authorization": f"token {admin.token}"})
            latencies.append(time.monotonic() - started)
            assert answer.status_code == 200, (answer.status_code, answer.text[:300])
            time.sleep(0.1)
        return latencies

    users: dict[str, HubUser] = {}

    def one_user(name):
        # The HTML login form, like a browser.
        user = users[name] = HubUser.signed_in(stack.url, name, f"{name}-pw-12345")
        profile = "gpu1" if name in GPU_USERS else "cpu"
        started = time.monotonic()
        answer = user.start({"profile": profile})
        assert answer.status_code in (201, 202), (name, answer.status_code, answer.text)
        if profile == "gpu1":
            said = user.progress_messages("in line", timeout=SPAWN_TIMEOUT)
            if said and "in line" in said[-1]:
                return name, "waiting", said[-1], time.monotonic() - started
        user.wait_ready(SPAWN_TIMEOUT, logs=stack.logs)
        assert user.lab("GET", "/status").status_code == 200
        return name, "ready", profile, time.monotonic() - started

    prober = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="load-probe")
    starters = concurrent.futures.ThreadPoolExecutor(20, thread_name_prefix="load-user")
    probe = prober.submit(probe_api)
    storm_started = time.monotonic()
    try:
        starts = {starters.submit(one_user, name): name for name in GPU_USERS + CPU_USERS}
        by_name = _gather(starts, STORM_DEADLINE, "users starting at once")
        storm_over.set()
        latencies = _gather({probe: "hub API prober"}, PROBE_DEADLINE,
                            "the hub API prober (after the storm)")["hub API prober"]
    finally:  # never wait here for a hung thread: _gather has already named it
        storm_over.set()
        starters.shutdown(wait=False, cancel_futures=True)
        prober.shutdown(wait=False, cancel_futures=True)
    storm = time.monotonic() - storm_started
    outcomes = [by_name[name] for name in GPU_USERS + CPU_USERS]

    ready = [o for o in outcomes if o[1] == "ready"]
    waiting = [o for o in outcomes if o[1] == "waiting"]
    assert len(outcomes) == 20
    assert sorted(o[0] for o in ready if o[2] == "cpu") == CPU_USERS
    assert len([o for o in ready if o[2] == "gpu1"]) == 4, outcomes
    assert len(waiting) == 8 and all("Waiting for a GPU" in o[2] for o in waiting), outcomes
    assert sorted(int(o[2].split(": ")[1].split()[0][:-2]) for o in waiting) == list(range(1, 9))
    labs = stack.docker("ps", "-q", "--filter", f"label=gpuhub.project={stack.project}").stdout.split()
    assert len(labs) == 12, "exactly the ready labs run: nothing lost, nothing extra"
    for name, *_ in waiting:  # Cancel: out of the line, and nothing left behind
        users[name].stop(logs=stack.logs)
    assert len(stack.docker("ps", "-q", "--filter",
                            f"label=gpuhub.project={stack.project}").stdout.split()) == 12

    spawn_times = [o[3] for o in ready]
    api_p95, api_max = _percentile(latencies, 0.95), max(latencies)
    measure("load: 20 users, whole storm", storm)
    measure("load: spawn p50 (12 ready labs)", statistics.median(spawn_times))
    measure("load: spawn max", max(spawn_times))
    measure("load: hub API p95 during storm", api_p95)
    measure("load: hub API max during storm", api_max)
    assert len(latencies) >= 10, latencies
    # p95 is the hub's responsiveness; on 2 cores booting 12 labs one sample may stall for
    # a scheduling moment, so the max gets its own, looser bound (README: the figures). A
    # hub whose event loop waited for the storm's 20 bcrypt hashes (0.25 s each) or for
    # Docker would stall for seconds, far past both bounds.
    assert api_p95 < 1.0 and api_max < 3.0, (
        f"hub API p95 {api_p95:.2f} s, max {api_max:.2f} s during the storm")
