"""The spawn progress tells the user which GPUs the lab got (or that it has none)."""

import asyncio

from gpuhub.spawner import GpuDockerSpawner


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
