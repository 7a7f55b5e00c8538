"""A GPU the NVIDIA toolkit refuses goes out of service; the start takes another; it comes
back when the sampler reads it again or an admin brings it back. No Docker here: the
refusals are the real toolkit's words as Docker reports them (the live tests in
tests/integration/test_gpu_faults.py get them from the double's hook through runc)."""

from __future__ import annotations

import asyncio
import json

import docker
import pytest
from dockerspawner import DockerSpawner
from traitlets.config import Config

from gpuhub.core.allocator import GpuAllocator, NoGpuAvailable
from gpuhub.core.gpus import Gpu, to_json
from gpuhub.core.outofservice import (
    NvidiaRefusal,
    OutOfService,
    back_requests,
    nvidia_refusal,
    read,
)
from gpuhub.core.settings import validate
from gpuhub.hub.hubconfig import apply_config
from gpuhub.hub.spawner import GpuDockerSpawner, StartRefused
from support.hubsecrets import secrets_dir
from support.spawners import fresh_hub_process, user_spawner

PROFILES = """
- display_name: CPU
  slug: cpu
  gpus: 0
- display_name: 1 GPU
  slug: gpu1
  gpus: 1
"""
GPUS = ["GPU-4f6f9d2a-1c3e-4b7a-9e21-0a1b2c3d4e50", "GPU-8a2b7c41-5d9e-4f03-b6a7-1b2c3d4e5f61"]

# Docker 20.10 + runc 1.1, as users recorded them (NVIDIA/nvidia-container-toolkit#203,
# NVIDIA/nvidia-docker#1505, labdao/plex#18); the double's hook produces the same.
HOOK = ("OCI runtime create failed: container_linux.go:380: starting container process caused: "
        "process_linux.go:545: container init caused: Running hook #0:: error running hook: "
        "exit status 1, stdout: , stderr: ")
RUNC = ("failed to create shim task: OCI runtime create failed: runc create failed: unable to "
        "start container process: error during container init: error running hook #0: error "
        "running hook: exit status 1, stdout: , stderr: ")
UNKNOWN = HOOK + f"nvidia-container-cli: device error: {GPUS[0]}: unknown device: unknown"
DETECTION = HOOK + "nvidia-container-cli: detection error: nvml error: unknown error: unknown"
MISMATCH = HOOK + ("nvidia-container-cli: initialization error: nvml error: driver/library "
                   "version mismatch: unknown")
CDI = ("could not select device driver \"cdi\" with capabilities: []: unresolvable CDI devices "
       "nvidia.com/gpu=3")


@pytest.mark.parametrize("error, refusal", [
    (UNKNOWN, NvidiaRefusal(GPUS[0], "the NVIDIA driver does not know this device")),
    (HOOK + "nvidia-container-cli: device error: 0000:3b:00.0: unknown device: unknown",
     NvidiaRefusal("0000:3b:00.0", "the NVIDIA driver does not know this device")),
    (CDI, NvidiaRefusal("3", "the NVIDIA driver does not know this device")),
    # The double's CDI path through Docker 20.10 (runc's log, as the real runtime writes it):
    ("failed to create shim task: OCI runtime create failed: unresolvable CDI devices "
     f"nvidia.com/gpu={GPUS[1]}: unknown.",
     NvidiaRefusal(GPUS[1], "the NVIDIA driver does not know this device")),
    (DETECTION, NvidiaRefusal("", "nvml error: unknown error")),
    (MISMATCH, NvidiaRefusal("", "nvml error: driver/library version mismatch")),
    (f'500 Server Error ("{DETECTION}")', NvidiaRefusal("", "nvml error: unknown error")),
    # Docker 20.10.24's own words here, from the double's hook through runc:
    (RUNC + "nvidia-container-cli: detection error: nvml error: unknown error: unknown.",
     NvidiaRefusal("", "nvml error: unknown error")),
    (RUNC + "nvidia-container-cli: device error: 7: unknown device: unknown.",
     NvidiaRefusal("7", "the NVIDIA driver does not know this device")),
    (HOOK + "nvidia-container-cli: detection error: nvml error: unknown error\\nmore",
     NvidiaRefusal("", "nvml error: unknown error")),
    ("500 Server Error: OCI runtime create failed: exec: \"jupyterhub-singleuser\": "
     "executable file not found in $PATH: unknown", None),
    ("", None),
])
def test_the_toolkits_refusals_are_recognised_and_nothing_else(error, refusal):
    assert nvidia_refusal(error) == refusal


def test_the_allocator_never_hands_out_a_gpu_out_of_service():
    allocator = GpuAllocator(devices=["a", "b", "c"])
    assert allocator.allocate("u", 1, {}, out_of_service={"a"}) == ["b"]
    assert allocator.allocate("u", 1, {"v": ["b"]}, out_of_service={"a"}) == ["c"]
    with pytest.raises(NoGpuAvailable) as refused:
        allocator.allocate("u", 3, {}, out_of_service={"a"})
    assert refused.value.reason == "gpus_busy"  # the start may wait in line
    assert "GPU a is out of service" in str(refused.value)
    shared = GpuAllocator(devices=["a", "b"], policy="shared")
    assert shared.allocate("u", 1, {}, out_of_service={"b"}) == ["a"]
    pinned = GpuAllocator(devices=["a", "b"], pins={"u": ["a"]})
    with pytest.raises(NoGpuAvailable, match="GPU a is out of service"):
        pinned.allocate("u", 1, {}, out_of_service={"a"})


def test_a_gpu_the_sampler_cannot_read_goes_out_and_comes_back_when_read_again(tmp_path):
    path = tmp_path / "out.json"
    out = OutOfService(path)
    reading = {"taken_at": 100.0, "error": "nvidia-smi exited 15: Unable to determine the "
               "device handle for GPU0000:02:00.0: Unknown Error; 1 GPU(s) read",
               "gpus": [{"index": "0", "uuid": "GPU-a"}]}
    taken, back = out.from_readings(["GPU-a", "GPU-b"], reading, 5, now=100.0)
    assert [e.device for e in taken] == ["GPU-b"] and back == []
    assert "nvidia-smi cannot read it (nvidia-smi exited 15" in taken[0].reason
    assert [e.device for e in read(path)] == ["GPU-b"]  # saved for the page and the CLI
    # A reading without an error (or of no GPU at all) takes nothing out.
    assert OutOfService().from_readings(["GPU-a", "GPU-b"], {**reading, "error": ""}, 5,
                                        100.0) == ([], [])
    assert OutOfService().from_readings(["GPU-a"], {**reading, "gpus": []}, 5, 100.0) == ([], [])
    # Read again, but by a reading older than one interval after it went out: proves nothing.
    both = {"taken_at": 103.0, "error": "", "gpus": [{"uuid": "GPU-a"}, {"uuid": "GPU-b"}]}
    assert out.from_readings(["GPU-a", "GPU-b"], both, 5, now=104.0) == ([], [])
    assert out.from_readings(["GPU-a", "GPU-b"], {**both, "taken_at": 106.0}, 5, 106.0) == (
        [], ["GPU-b"])
    assert read(path) == [] and "GPU-b" not in out


def test_a_gpu_listed_with_a_fault_goes_out_with_its_reason_even_when_it_is_the_only_one(
        tmp_path):
    """A GPU that needs a reset is listed (with the sampler's fault): out of service with
    that reason, also on a one-GPU server (no other GPU read); back once it reads healthy."""
    out = OutOfService(tmp_path / "out.json")
    why = "GPU 0 needs a reset (it reads [GPU requires reset]; an Xid: see the host's kernel log)"
    reading = {"taken_at": 100.0, "error": f"nvidia-smi: {why}; 1 GPU(s) read",
               "gpus": [{"index": "0", "uuid": "GPU-a", "utilisation": None, "fault": why}]}
    taken, back = out.from_readings(["GPU-a"], reading, 5, now=100.0)
    assert [(e.device, e.reason) for e in taken] == [("GPU-a", why)] and back == []
    assert out.from_readings(["GPU-a"], reading, 5, now=110.0) == ([], [])  # still out
    healthy = {"taken_at": 110.0, "error": "", "gpus": [{"index": "0", "uuid": "GPU-a"}]}
    assert out.from_readings(["GPU-a"], healthy, 5, now=110.0) == ([], ["GPU-a"])


def test_an_admins_request_is_read_once(tmp_path):
    (tmp_path / "1").write_text("GPU-b\n")
    (tmp_path / "2").write_text("")
    assert back_requests(tmp_path) == ["GPU-b"]
    assert back_requests(tmp_path) == [] and list(tmp_path.iterdir()) == []
    assert back_requests(tmp_path / "missing") == []


def test_an_unreadable_list_is_empty_and_a_failed_save_is_said(tmp_path):
    (tmp_path / "out.json").write_text("{not json")
    assert read(tmp_path / "out.json") == []
    (tmp_path / "dir").mkdir()
    out = OutOfService(tmp_path / "dir")  # a directory: the rename fails
    assert out.take_out("GPU-a", "why", 1.0)
    assert "GPU-a" in out and "could not save" in out.save_error


# --- the spawner -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_spawner_class(monkeypatch):
    fresh_hub_process(monkeypatch)


def _lab_on_a_toolkit(tmp_path, monkeypatch, refuse):
    """alice's spawner on two GPUs, where `docker start` fails with ``refuse(gpu_ids)``
    (a Docker error text, or None to start)."""
    starts = []

    async def create_and_start(self):
        starts.append(list(self.gpu_ids))
        await asyncio.sleep(0.05)  # the engine runs the hook
        error = refuse(self.gpu_ids)
        if error:
            raise docker.errors.APIError("500 Server Error", explanation=error)
        return ("10.0.0.5", 8888)

    async def docker_calls(method, *args, **kwargs):
        return []

    monkeypatch.setattr(DockerSpawner, "start", create_and_start)
    monkeypatch.setattr(GpuDockerSpawner, "wait_until_serving",
                        lambda self, ip, port: asyncio.sleep(0))
    monkeypatch.setattr(GpuDockerSpawner, "_remove_quietly", lambda self: asyncio.sleep(0))
    config = Config()
    apply_config(config, validate({"LAB_FIREWALL": "false", "GPU_LINE_TIMEOUT": "2"}),
                 env={"GPUHUB_GPU_INVENTORY": to_json([Gpu(str(i), u) for i, u in enumerate(GPUS)])},
                 data_dir=tmp_path, secrets_dir=secrets_dir(tmp_path))
    config.GpuDockerSpawner.out_of_service_file = str(tmp_path / "out.json")
    config.GpuDockerSpawner.gpu_samples_file = ""
    config.GpuDockerSpawner.gpu_back_dir = ""
    config.GpuDockerSpawner.profiles_yaml = PROFILES
    spawner = user_spawner(config)
    spawner.user_options = {"profile": "gpu1"}
    monkeypatch.setattr(spawner, "docker", docker_calls)
    return spawner, starts


def test_a_gpu_the_toolkit_refuses_goes_out_of_service_and_the_start_takes_another(
        tmp_path, monkeypatch):
    spawner, starts = _lab_on_a_toolkit(
        tmp_path, monkeypatch, lambda ids: UNKNOWN if GPUS[0] in ids else None)

    async def main():
        spawner._spawn_pending = True
        started = asyncio.ensure_future(spawner.start())
        await asyncio.sleep(0.01)  # JupyterHub asks for progress once the start runs
        messages = [e["message"] async for e in spawner.progress()]
        return await started, messages

    served, messages = asyncio.run(asyncio.wait_for(main(), 10))
    assert served == ("10.0.0.5", 8888)
    assert starts == [[GPUS[0]], [GPUS[1]]] and spawner.gpu_ids == [GPUS[1]]
    note = (f"GPU {GPUS[0]} is out of service: the NVIDIA driver does not know this device; "
            "you are next in line for another")
    assert messages == [f"GPUs granted: {GPUS[0]}", note, f"GPUs granted: {GPUS[1]}"]
    assert [e.device for e in read(tmp_path / "out.json")] == [GPUS[0]]
    assert GpuDockerSpawner._gpu_state.grants.held() == {}


def test_progress_asked_for_before_the_start_begins_follows_that_start(tmp_path, monkeypatch):
    """JupyterHub answers a progress request from the moment a spawn begins, and calls
    start() only after awaits of its own (and, with every lab at once, nothing else holds
    the progress back): it must not read the last start's state, or say "No GPU for this
    lab" to a GPU user, and it must still give the faulty GPU's line."""
    spawner, _ = _lab_on_a_toolkit(
        tmp_path, monkeypatch, lambda ids: UNKNOWN if GPUS[0] in ids else None)
    spawner.gpu_ids = []  # the last start's (a CPU profile)
    spawner._gpu_fault_notes = ["a note of the last start"]

    async def main():
        spawner._spawn_pending = True  # JupyterHub begins the spawn
        progress = asyncio.ensure_future(
            asyncio.wait_for(_messages(spawner), 10))
        await asyncio.sleep(0.3)  # its own awaits (OAuth client, hooks)
        served = await spawner.start()
        spawner._spawn_pending = False
        return served, await progress

    served, messages = asyncio.run(asyncio.wait_for(main(), 10))
    assert served == ("10.0.0.5", 8888)
    note = (f"GPU {GPUS[0]} is out of service: the NVIDIA driver does not know this device; "
            "you are next in line for another")
    assert messages == [f"GPUs granted: {GPUS[0]}", note, f"GPUs granted: {GPUS[1]}"]


async def _messages(spawner) -> list[str]:
    return [e["message"] async for e in spawner.progress()]


def test_with_no_other_gpu_free_the_user_waits_first_in_line(tmp_path, monkeypatch):
    spawner, starts = _lab_on_a_toolkit(
        tmp_path, monkeypatch, lambda ids: UNKNOWN if GPUS[0] in ids else None)
    state = spawner.gpu_state
    state.out_of_service.take_out(GPUS[1], "lost", 0.0)  # the other GPU is out already

    async def main():
        started = asyncio.ensure_future(spawner.start())
        await asyncio.sleep(0.3)
        position = [w.user for w in state.line.waiters]
        state.out_of_service.bring_back(GPUS[1])  # as the sampler would, reading it again
        state.kick_line()
        return position, await started

    position, served = asyncio.run(asyncio.wait_for(main(), 10))
    assert position == ["alice"] and served == ("10.0.0.5", 8888)
    assert starts == [[GPUS[0]], [GPUS[1]]]


def test_without_a_line_the_refusal_names_the_gpu_out_of_service(tmp_path, monkeypatch):
    spawner, _ = _lab_on_a_toolkit(tmp_path, monkeypatch, lambda ids: UNKNOWN)
    spawner.gpu_line_timeout = 0
    spawner.gpu_state.out_of_service.take_out(GPUS[1], "lost", 0.0)
    with pytest.raises(StartRefused) as refused:
        asyncio.run(spawner.start())
    assert refused.value.status_code == 409
    assert refused.value.log_message.startswith(
        f"GPU {GPUS[0]} is out of service: the NVIDIA driver does not know this device; ")


@pytest.mark.parametrize("error, words", [
    (DETECTION, '"nvml error: unknown error"'),
    (MISMATCH, '"nvml error: driver/library version mismatch"'),
])
def test_when_the_toolkit_refuses_every_gpu_the_user_gets_one_line(tmp_path, monkeypatch,
                                                                    error, words):
    spawner, starts = _lab_on_a_toolkit(tmp_path, monkeypatch, lambda ids: error)
    spawner.gpu_state.out_of_service.take_out(GPUS[1], "nvidia-smi cannot read it", 0.0)
    with pytest.raises(StartRefused) as refused:
        asyncio.run(spawner.start())
    assert (refused.value.status_code, refused.value.refusal) == (503, "gpu_fault")
    message = refused.value.log_message
    assert words in message and f"GPU {GPUS[1]} is out of service" in message
    assert "OCI" not in message and len(starts) == 1
    assert GPUS[0] not in spawner.gpu_state.out_of_service  # not this GPU's fault


def test_a_start_that_fails_otherwise_takes_no_gpu_out(tmp_path, monkeypatch):
    spawner, starts = _lab_on_a_toolkit(tmp_path, monkeypatch,
                                        lambda ids: "executable file not found in $PATH")
    with pytest.raises(StartRefused) as refused:
        asyncio.run(spawner.start())
    assert refused.value.refusal == "docker_error"  # said in one line (test_spawner.py)
    assert isinstance(refused.value.__cause__, docker.errors.APIError)
    assert len(starts) == 1 and not spawner.gpu_state.out_of_service.devices()


def test_the_watch_applies_the_readings_and_the_admins_requests(tmp_path, monkeypatch):
    spawner, _ = _lab_on_a_toolkit(tmp_path, monkeypatch, lambda ids: None)
    state = spawner.gpu_state
    state.out_of_service.take_out(GPUS[0], "unknown", 10.0)
    state.out_of_service.take_out(GPUS[1], "unknown", 10.0)
    (tmp_path / "back").mkdir()
    (tmp_path / "back" / "0").write_text(GPUS[1])
    state.back_dir = tmp_path / "back"
    state.samples_file = tmp_path / "gpus.json"
    state.samples_file.write_text(json.dumps({
        "version": 1, "taken_at": 30.0, "interval": 5, "error": "",
        "gpus": [{"index": "0", "uuid": GPUS[0]}]}))
    import logging
    asked, samples = state.read_fault_news(now=31.0)
    assert asked == [GPUS[1]] and samples["taken_at"] == 30.0
    assert sorted(state.apply_fault_news(asked, samples, 31.0, logging.getLogger())) == sorted(GPUS)
    assert state.out_of_service.devices() == set()


# --- MIG: an instance is read as its parent GPU ----------------------------------------------


def test_a_mig_instance_follows_its_parent_gpu_in_and_out_of_service():
    """nvidia-smi --query-gpu lists whole GPUs only: an instance is never in a reading
    itself. A reading with an error that still reads its parent leaves it in service; one
    that leaves the parent out takes it out; the parent read again brings it back."""
    parents = {"MIG-a": "GPU-p", "MIG-b": "GPU-p"}
    devices = ["MIG-a", "MIG-b", "GPU-w"]
    error = "nvidia-smi exited 15: Unable to determine the device handle"
    out = OutOfService()
    # A GPU outside the inventory is lost: the reading has an error, ours all read.
    parent_read = {"taken_at": 100.0, "error": error,
                   "gpus": [{"uuid": "GPU-p"}, {"uuid": "GPU-w"}]}
    assert out.from_readings(devices, parent_read, 5, 100.0, parents) == ([], [])
    # Without the mapping every instance looked unreadable (the bug this guards).
    taken, _ = OutOfService().from_readings(devices, parent_read, 5, 100.0)
    assert [e.device for e in taken] == ["MIG-a", "MIG-b"]
    parent_lost = {"taken_at": 110.0, "error": error, "gpus": [{"uuid": "GPU-w"}]}
    taken, _ = out.from_readings(devices, parent_lost, 5, 110.0, parents)
    assert [e.device for e in taken] == ["MIG-a", "MIG-b"]
    again = {"taken_at": 120.0, "error": "", "gpus": [{"uuid": "GPU-p"}, {"uuid": "GPU-w"}]}
    assert out.from_readings(devices, again, 5, 120.0, parents) == ([], ["MIG-a", "MIG-b"])


def test_the_hub_hands_the_instances_parents_to_its_fault_watch(tmp_path):
    parent = "GPU-5b0c7a1e-3f2d-4c8b-9a61-7e2f4d3c1b90"
    inventory = [Gpu("0:0", "MIG-1d4e8f20", "A100 MIG 1g.5gb", 5120, parent, "1g.5gb"),
                 Gpu("1", GPUS[1])]
    c = Config()
    apply_config(c, validate({}), env={"GPUHUB_GPU_INVENTORY": to_json(inventory)},
                 data_dir=tmp_path, secrets_dir=secrets_dir(tmp_path))
    spawner = user_spawner(c)
    assert spawner.gpu_state.parents == {"MIG-1d4e8f20": parent}


@pytest.mark.parametrize("error, device", [
    ("stderr: nvidia-container-cli: device error: MIG-3f60a142-8c5d: unknown device: unknown",
     "MIG-3f60a142-8c5d"),
    ("stderr: nvidia-container-cli: device error: 0:4: unknown device: unknown", "0:4"),
    ("OCI runtime create failed: unresolvable CDI devices nvidia.com/gpu=0:4: unknown", "0:4"),
    ("OCI runtime create failed: unresolvable CDI devices nvidia.com/gpu=MIG-3f60a142-8c5d",
     "MIG-3f60a142-8c5d"),
])
def test_a_refused_mig_instance_is_named_whole(error, device):
    """A MIG instance's ID may hold a ":" (0:4): cut at it, GPU 0 would go out of service."""
    assert nvidia_refusal(error).device == device
