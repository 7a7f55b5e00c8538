"""The shared and round-robin policies, each on its own stack with the 4 fake GPUs."""

import collections
import concurrent.futures

from harness.hub import HubUser

SPAWN_TIMEOUT = 180


def _start_all(stack, names, profile="gpu1"):
    users = []
    stack.add_users({name: f"{name}-pw-12345" for name in names})
    for name in names:
        users.append(HubUser.signed_in(stack.url, name, f"{name}-pw-12345"))
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        answers = list(pool.map(lambda u: u.start({"profile": profile}), users))
    assert all(a.status_code in (201, 202) for a in answers), [a.text for a in answers]
    for user in users:
        user.wait_ready(SPAWN_TIMEOUT, logs=stack.logs)
    return users


def _env(stack, user):
    info = stack.inspect(stack.lab_container(user))
    return dict(e.split("=", 1) for e in info["Config"]["Env"])


def test_shared_policy_gives_every_gpu_lab_every_gpu(stack_factory):
    stack = stack_factory(GPU_POLICY="shared")
    stack.up("--no-build")
    users = _start_all(stack, ["sharea", "shareb"])
    everything = {row["uuid"] for row in __import__("json").loads(stack.invoke("gpus", "--json").stdout)}
    assert len(everything) == 4
    for user in users:
        env = _env(stack, user.name)
        assert set(env["NVIDIA_VISIBLE_DEVICES"].split(",")) == everything
        assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
    stack.teardown()


def test_round_robin_spreads_labs_least_loaded_first(stack_factory):
    stack = stack_factory(GPU_POLICY="round-robin")
    stack.up("--no-build")
    users = _start_all(stack, [f"rr{i}" for i in range(6)])
    load = collections.Counter()
    for user in users:
        env = _env(stack, user.name)
        ids = env["NVIDIA_VISIBLE_DEVICES"].split(",")
        assert len(ids) == 1, env
        assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"
        load[ids[0]] += 1
    assert len(load) == 4 and max(load.values()) - min(load.values()) <= 1, load
    stack.teardown()
