"""The spawn progress tells the user which GPUs the lab got (or that it has none)."""

import asyncio

from gpuhub.hub.spawner import GpuDockerSpawner


def _messages(gpu_ids, inventory):
    spawner = GpuDockerSpawner.__new__(GpuDockerSpawner)
    # Only the traits progress() reads; no hub, user or Docker needed.
    object.__setattr__(spawner, "_trait_values", {"gpu_ids": gpu_ids, "gpu_inventory": inventory})

    async def collect():
        return [event["message"] async for event in spawner.progress()]
    return asyncio.run(collect())


def test_progress_names_the_granted_gpus():
    assert _messages(["GPU-a", "GPU-b"], ["GPU-a", "GPU-b", "GPU-c"]) == ["GPUs granted: GPU-a, GPU-b"]


def test_progress_says_cpu_only_when_the_profile_has_no_gpu():
    assert _messages([], ["GPU-a"]) == ["No GPU for this lab (CPU profile)"]


def test_progress_is_silent_on_a_host_without_gpus():
    assert _messages([], []) == []


def test_progress_says_why_the_last_lab_stopped_by_itself():
    spawner = GpuDockerSpawner.__new__(GpuDockerSpawner)
    object.__setattr__(spawner, "_trait_values", {"gpu_ids": [], "gpu_inventory": []})
    spawner._said_stop_reason = "stopped by itself: out of memory (memory limit 536870912 bytes)"

    async def collect():
        return [event["message"] async for event in spawner.progress()]
    assert asyncio.run(collect()) == [
        "Your last lab stopped by itself: out of memory (memory limit 536870912 bytes)"]


def test_why_a_lab_stopped_in_plain_words():
    spawner = GpuDockerSpawner.__new__(GpuDockerSpawner)
    object.__setattr__(spawner, "_trait_values", {"mem_limit": 512 * 1024 ** 2})
    assert spawner.why_stopped({"OOMKilled": True, "ExitCode": 137}) == (
        "out of memory (memory limit 536870912 bytes)")
    assert spawner.why_stopped({"OOMKilled": False, "ExitCode": 1}) == "exit code 1"
