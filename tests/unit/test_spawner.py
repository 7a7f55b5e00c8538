"""GpuDockerSpawner without Docker: the environment, device requests and labels of a lab."""

import asyncio

import docker
import pytest
import requests
from dockerspawner import DockerSpawner
from traitlets.config import Config

from gpuhub.core.allocator import NoGpuAvailable
from gpuhub.core.gpus import Gpu, to_json
from gpuhub.core.settings import validate
from gpuhub.hub.hubconfig import apply_config
from gpuhub.hub.spawner import LABEL_GPUS, LABEL_SINCE, LABEL_USER, GpuDockerSpawner
from support.hubsecrets import secrets_dir
from support.spawners import fresh_hub_process, user_spawner

GPUS = ["GPU-4f6f9d2a-1c3e-4b7a-9e21-0a1b2c3d4e50", "GPU-8a2b7c41-5d9e-4f03-b6a7-1b2c3d4e5f61"]



def make_config(tmp_path, gpus=(), **settings) -> Config:
    c = Config()
    inventory = to_json([Gpu(str(i), uuid) for i, uuid in enumerate(gpus)])
    apply_config(c, validate(settings), env={"GPUHUB_GPU_INVENTORY": inventory}, data_dir=tmp_path, secrets_dir=secrets_dir(tmp_path))
    return c


def make_spawner(config: Config, name: str = "alice") -> GpuDockerSpawner:
    return user_spawner(config, name)


@pytest.fixture(autouse=True)
def fresh_spawner_class(monkeypatch):
    """The allocator, in-flight grants and the line live on the class: each test its own."""
    fresh_hub_process(monkeypatch)


@pytest.fixture
def lab(tmp_path):
    """A spawner for alice on a host with two GPUs, both granted."""
    spawner = make_spawner(make_config(tmp_path, GPUS))
    spawner.gpu_ids = list(GPUS)
    return spawner


@pytest.fixture
def cpu_lab(tmp_path):
    return make_spawner(make_config(tmp_path))


def test_no_gpus_means_nvidia_visible_devices_void(cpu_lab):
    env = cpu_lab.get_env()
    assert cpu_lab.gpu_ids == []
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env["GPUHUB_GPUS"] == ""


def test_granted_gpus_are_exactly_the_visible_devices(lab):
    env = lab.get_env()
    assert env["NVIDIA_VISIBLE_DEVICES"] == ",".join(GPUS)
    assert env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert env["GPUHUB_GPUS"] == ",".join(GPUS)
    assert env["JUPYTERHUB_USER"] == "alice"


def test_configured_environment_cannot_widen_the_grant(tmp_path):
    c = make_config(tmp_path, GPUS[:1])
    c.Spawner.environment = {"NVIDIA_VISIBLE_DEVICES": "all", "TEAM": "vision"}
    spawner = make_spawner(c)
    spawner.gpu_ids = GPUS[:1]
    env = spawner.get_env()
    assert env["NVIDIA_VISIBLE_DEVICES"] == GPUS[0]
    assert env["TEAM"] == "vision"


def test_device_request_names_the_nvidia_driver_and_the_ids(lab):
    (request,) = lab.gpu_host_config()["device_requests"]
    assert request["Driver"] == "nvidia"
    assert request["DeviceIDs"] == GPUS
    assert request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0, "a count would ask for GPUs beyond the granted IDs"


def test_no_device_request_without_gpus(cpu_lab):
    assert cpu_lab.gpu_host_config() == {}


def test_labels_record_user_and_gpus(lab, cpu_lab):
    labels = lab.gpu_labels()
    assert labels["gpuhub.project"] == "gpuhub"
    assert labels[LABEL_USER] == "alice"
    assert labels[LABEL_GPUS] == ",".join(GPUS)
    assert labels[LABEL_SINCE].endswith("+00:00")
    assert cpu_lab.gpu_labels()[LABEL_GPUS] == ""


def test_start_grants_and_stop_releases(tmp_path, monkeypatch):
    seen = {}

    async def fake_start(self):
        seen["at start"] = list(self.gpu_ids)
        return ("10.0.0.5", 8888)

    async def fake_stop(self, now=False):
        seen["at stop"] = list(self.gpu_ids)

    async def no_labs_running(method, *args, **kwargs):
        assert method == "containers", method
        return FIREWALL if _asks_for_the_firewall(kwargs) else []

    async def container_already_removed(self):
        return None

    monkeypatch.setattr(DockerSpawner, "start", fake_start)
    monkeypatch.setattr(DockerSpawner, "stop", fake_stop)
    monkeypatch.setattr(DockerSpawner, "get_object", container_already_removed)

    async def serving(self, ip, port):
        return None

    monkeypatch.setattr(GpuDockerSpawner, "wait_until_serving", serving)
    spawner = make_spawner(make_config(tmp_path, GPUS))
    monkeypatch.setattr(spawner, "docker", no_labs_running)
    assert spawner.gpu_ids == []
    assert asyncio.run(spawner.start()) == ("10.0.0.5", 8888)
    assert spawner.gpu_ids == GPUS
    asyncio.run(spawner.stop())
    assert seen == {"at start": GPUS, "at stop": GPUS}
    assert spawner.gpu_ids == []
    assert GpuDockerSpawner._gpu_state.grants.held() == {}


FIREWALL = [{"Id": "f1", "Labels": {"com.docker.compose.service": "lab-firewall"}}]


def _asks_for_the_firewall(kwargs) -> bool:
    filters = kwargs.get("filters", {})
    return "com.docker.compose.service=lab-firewall" in filters.get("label", [])


def _start_without_a_firewall(tmp_path, monkeypatch, **settings):
    """Start alice's lab when Docker lists no healthy lab-firewall; return the calls."""
    calls = []

    async def docker_calls(method, *args, **kwargs):
        calls.append((method, kwargs))
        return []

    async def fake_start(self):
        return ("10.0.0.5", 8888)

    async def serving(self, ip, port):
        return None

    monkeypatch.setattr(DockerSpawner, "start", fake_start)
    monkeypatch.setattr(GpuDockerSpawner, "wait_until_serving", serving)
    spawner = make_spawner(make_config(tmp_path, GPUS, **settings))
    monkeypatch.setattr(spawner, "docker", docker_calls)
    return spawner, calls


def test_no_lab_starts_while_the_lab_firewall_is_not_healthy(tmp_path, monkeypatch):
    from tornado import web

    spawner, calls = _start_without_a_firewall(tmp_path, monkeypatch)
    with pytest.raises(web.HTTPError) as info:
        asyncio.run(spawner.start())
    assert info.value.status_code == 503
    assert "lab firewall" in info.value.log_message and "invoke up" in info.value.log_message
    (method, kwargs), = calls
    assert kwargs["filters"] == {"label": ["com.docker.compose.project=gpuhub",
                                           "com.docker.compose.service=lab-firewall"],
                                 "health": "healthy"}
    assert spawner.gpu_ids == [] and spawner.gpu_state.grants.held() == {}


def test_with_the_lab_firewall_off_labs_start_without_asking(tmp_path, monkeypatch):
    spawner, calls = _start_without_a_firewall(tmp_path, monkeypatch, LAB_FIREWALL="false")
    assert asyncio.run(spawner.start()) == ("10.0.0.5", 8888)
    assert not any(_asks_for_the_firewall(kwargs) for _, kwargs in calls)


def _docker_error(status: int, explanation: str) -> docker.errors.APIError:
    answer = requests.Response()
    answer.status_code = status
    return docker.errors.APIError(f"{status} error", response=answer, explanation=explanation)


BROKER_RULE = ("refused by gpuhub docker-proxy: HostConfig.Binds: /srv/lab-data/secret-project "
               "is not the shared folder")


@pytest.mark.parametrize(("error", "status", "refusal", "words"), [
    (_docker_error(403, BROKER_RULE), 500, "broker_refused", "Docker broker refused"),
    (_docker_error(507, "refused by gpuhub docker-proxy: work folder: the files of "
                        "gpuhub-home-alice could not all be copied into /srv/work/alice"),
     507, "work_folder", "your files are kept"),
    (_docker_error(502, "gpuhub docker-proxy: Docker did not answer (ConnectionRefusedError)"),
     503, "docker_down", "Docker did not answer"),
    (requests.exceptions.ConnectionError("docker-proxy:2375: connection refused"), 503,
     "docker_down", "Docker did not answer"),
    (_docker_error(409, "Conflict. The container name /gpuhub-lab-alice is already in use"),
     500, "docker_error", "Docker could not create or start your lab"),
])
def test_a_start_docker_or_the_broker_refused_says_so_in_one_line(
        tmp_path, monkeypatch, caplog, error, status, refusal, words):
    """JupyterHub answers a REST start that raised a Docker error with a bare 500 (and the
    spawn page with the raw error): the user gets one line, the hub's log keeps Docker's."""
    from gpuhub.hub import telemetry
    from gpuhub.hub.spawner import StartRefused

    async def refused(self):
        raise error

    spawner, _ = _start_without_a_firewall(tmp_path, monkeypatch, LAB_FIREWALL="false")
    monkeypatch.setattr(DockerSpawner, "start", refused)
    counted = telemetry.installed().spawns_refused.labels(reason=refusal)
    before = counted._value.get()
    with caplog.at_level("ERROR"), pytest.raises(StartRefused) as info:
        asyncio.run(spawner.start())
    assert (info.value.status_code, info.value.refusal) == (status, refusal)
    said = info.value.log_message
    assert words in said and "invoke " in said, said
    # Nothing Docker or the broker said reaches the user: host paths, the broker's rules.
    assert str(getattr(error, "explanation", error))[:30] not in said, said
    assert "/srv" not in said and "HostConfig" not in said, said
    assert info.value.__cause__ is error
    assert str(error) in caplog.text and "alice" in caplog.text
    assert counted._value.get() == before + 1
    assert spawner.gpu_ids == [] and spawner.gpu_state.grants.held() == {}


def test_a_failure_that_is_not_dockers_is_left_as_it_was():
    from gpuhub.hub.spawner import docker_failure

    assert docker_failure(ValueError("a bug")) is None
    toolkit = _docker_error(500, "OCI runtime create failed: nvidia-container-cli: device "
                                 "error: GPU-0: unknown device")
    assert docker_failure(toolkit) is None  # gpu_refused() says those


def test_stop_returns_only_once_docker_has_removed_the_container(tmp_path, monkeypatch):
    polls = []

    async def fake_stop(self, now=False):
        pass

    async def removed_on_third_look(self):
        polls.append(1)
        return None if len(polls) >= 3 else {"Id": "abc"}

    monkeypatch.setattr(DockerSpawner, "stop", fake_stop)
    monkeypatch.setattr(DockerSpawner, "get_object", removed_on_third_look)
    spawner = make_spawner(make_config(tmp_path, GPUS))
    asyncio.run(spawner.stop())
    assert len(polls) == 3


def test_create_object_merges_without_touching_the_config(tmp_path, monkeypatch):
    seen = {}

    async def fake_create_object(self):
        seen["host"] = self.extra_host_config
        seen["create"] = self.extra_create_kwargs
        return {"Id": "abc"}

    monkeypatch.setattr(DockerSpawner, "create_object", fake_create_object)
    c = make_config(tmp_path, GPUS)
    c.DockerSpawner.extra_host_config = {"shm_size": "1G"}
    c.DockerSpawner.extra_create_kwargs = {"labels": {"gpuhub.project": "gpuhub", "team": "x"},
                                           "user": "root"}
    spawner = make_spawner(c)
    spawner.gpu_ids = list(GPUS)
    assert asyncio.run(spawner.create_object()) == {"Id": "abc"}

    assert seen["host"]["shm_size"] == "1G"
    assert seen["host"]["device_requests"][0]["DeviceIDs"] == GPUS
    assert seen["create"]["user"] == "root"
    assert seen["create"]["labels"]["team"] == "x"
    assert seen["create"]["labels"]["gpuhub.project"] == "gpuhub"
    assert seen["create"]["labels"][LABEL_USER] == "alice"
    assert c.DockerSpawner.extra_host_config == {"shm_size": "1G"}
    assert c.DockerSpawner.extra_create_kwargs == {"labels": {"gpuhub.project": "gpuhub", "team": "x"},
                                                   "user": "root"}
    bob = make_spawner(c, "bob")
    assert bob.extra_host_config == {"shm_size": "1G"}
    assert LABEL_USER not in bob.extra_create_kwargs["labels"]


def test_create_object_twice_keeps_one_grant(lab, monkeypatch):
    async def fake_create_object(self):
        return None

    monkeypatch.setattr(DockerSpawner, "create_object", fake_create_object)
    asyncio.run(lab.create_object())
    asyncio.run(lab.create_object())
    assert len(lab.extra_host_config["device_requests"]) == 1
    assert lab.extra_create_kwargs["labels"][LABEL_USER] == "alice"


class FakeDocker:
    """Stands in for DockerSpawner.docker: records the calls, answers inspect_image."""

    def __init__(self):
        self.calls = []

    async def __call__(self, method, *args, **kwargs):
        self.calls.append((method, args, kwargs))
        if method == "inspect_image":
            return {"Config": {"Cmd": ["start-notebook.sh"]}}
        if method == "create_container":
            return {"Id": "abc123"}
        raise AssertionError(f"unexpected docker call {method}")


def create_container_kwargs(spawner, monkeypatch) -> dict:
    """Run the real create_object down to the docker-py host config, without a daemon."""
    # An explicit API version keeps docker-py from asking a daemon for one.
    monkeypatch.setattr(GpuDockerSpawner, "_client",
                        docker.APIClient(base_url="unix:///nonexistent.sock", version="1.43"))
    fake = FakeDocker()
    monkeypatch.setattr(spawner, "docker", fake)
    assert asyncio.run(spawner.create_object()) == {"Id": "abc123"}
    (create,) = [kw for method, _, kw in fake.calls if method == "create_container"]
    return create


def test_container_gets_device_requests_labels_and_env(lab, monkeypatch):
    create = create_container_kwargs(lab, monkeypatch)
    assert create["name"] == "gpuhub-lab-alice"
    assert create["host_config"]["DeviceRequests"] == [
        {"Driver": "nvidia", "Count": 0, "DeviceIDs": GPUS, "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert create["host_config"]["NetworkMode"] == "gpuhub-labs"
    assert create["labels"]["gpuhub.project"] == "gpuhub"
    assert create["labels"][LABEL_USER] == "alice"
    assert create["labels"][LABEL_GPUS] == ",".join(GPUS)
    assert create["environment"]["NVIDIA_VISIBLE_DEVICES"] == ",".join(GPUS)


def test_cpu_only_container_has_no_device_requests(cpu_lab, monkeypatch):
    create = create_container_kwargs(cpu_lab, monkeypatch)
    assert "DeviceRequests" not in create["host_config"]
    assert create["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert create["labels"][LABEL_GPUS] == ""


def test_a_profile_image_or_limit_does_not_leak_into_the_next_start(tmp_path):
    from gpuhub.core.profiles import Profile

    spawner = make_spawner(make_config(tmp_path, GPUS, LAB_MEM_LIMIT="4G"))
    default_image = spawner.image
    spawner.apply_profile(Profile(slug="big", display_name="Big", image="other/image:1",
                                  mem_limit="64G", cpu_limit=8.0))
    assert (spawner.image, spawner.mem_limit, spawner.cpu_limit) == ("other/image:1", 64 * 1024**3, 8.0)
    spawner.apply_profile(Profile(slug="cpu", display_name="CPU"))
    assert spawner.image == default_image
    assert spawner.mem_limit == 4 * 1024**3 and spawner.cpu_limit is None


def _inspect_returning(state):
    async def fake_docker(method, *args, **kwargs):
        assert method == "inspect_container", method
        if state is None:
            raise docker.errors.NotFound("gone")
        return {"State": state}
    return fake_docker


@pytest.mark.parametrize("state, words", [
    ({"Running": False, "OOMKilled": True, "ExitCode": 137}, "out of memory"),
    ({"Running": False, "OOMKilled": False, "ExitCode": 1}, "exit code 1"),
    (None, "it is gone"),
])
def test_a_lab_that_dies_while_starting_fails_at_once_with_the_reason(tmp_path, monkeypatch, state, words):
    from tornado import web

    spawner = make_spawner(make_config(tmp_path, GPUS))
    monkeypatch.setattr(spawner, "docker", _inspect_returning(state))
    with pytest.raises(web.HTTPError) as info:
        asyncio.run(spawner.wait_until_serving("127.0.0.1", 9))
    assert words in info.value.log_message and "stopped while starting" in info.value.log_message


def test_wait_until_serving_returns_once_the_lab_accepts_connections(tmp_path, monkeypatch):
    import socket

    spawner = make_spawner(make_config(tmp_path, GPUS))
    monkeypatch.setattr(spawner, "docker", _inspect_returning({"Running": True}))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        asyncio.run(spawner.wait_until_serving("127.0.0.1", server.getsockname()[1]))


def _booting_lab(tmp_path, monkeypatch, serving, gpus=GPUS):
    """A spawner whose DockerSpawner.start only does `docker start`, as the real one ends."""
    seen = []

    async def start_then_address(self):
        await self.start_object()
        return ("10.0.0.5", 8888)

    async def docker(method, *args, **kwargs):
        if method == "containers":
            return []
        assert method == "start", method
        seen.append(("docker start", spawner.start_slots.booting))

    async def waiting(self, ip, port):
        seen.append(("waiting until it serves", self.start_slots.booting))
        await serving()

    monkeypatch.setattr(DockerSpawner, "start", start_then_address)
    monkeypatch.setattr(GpuDockerSpawner, "wait_until_serving", waiting)
    monkeypatch.setattr(GpuDockerSpawner, "_remove_quietly", lambda self: asyncio.sleep(0))
    spawner = make_spawner(make_config(tmp_path, gpus, LAB_START_CONCURRENCY="1",
                                       LAB_FIREWALL="false"))
    monkeypatch.setattr(spawner, "docker", docker)
    return spawner, seen


def test_a_start_slot_is_held_from_docker_start_until_the_lab_serves(tmp_path, monkeypatch):
    spawner, seen = _booting_lab(tmp_path, monkeypatch, serving=lambda: asyncio.sleep(0))
    assert asyncio.run(spawner.start()) == ("10.0.0.5", 8888)
    assert seen == [("docker start", 1), ("waiting until it serves", 1)]
    assert spawner.start_slots.booting == 0


def test_a_lab_that_fails_to_boot_gives_its_start_slot_back(tmp_path, monkeypatch):
    async def dies():
        raise RuntimeError("lab died")

    spawner, seen = _booting_lab(tmp_path, monkeypatch, serving=dies)
    with pytest.raises(RuntimeError, match="lab died"):
        asyncio.run(spawner.start())
    assert seen[0] == ("docker start", 1)
    assert spawner.start_slots.booting == 0


def test_progress_says_when_a_lab_waits_for_others_to_start(tmp_path, monkeypatch):
    async def main():
        first, _ = _booting_lab(tmp_path, monkeypatch, serving=lambda: asyncio.sleep(1.2),
                                gpus=())
        second = make_spawner(first.config, name="bob")
        monkeypatch.setattr(second, "docker", first.docker)
        second._spawn_pending = True
        booting = asyncio.ensure_future(first.start())
        await asyncio.sleep(0.1)
        started = asyncio.ensure_future(second.start())
        messages = [event["message"] async for event in second.progress()]
        await asyncio.gather(booting, started)
        return messages

    messages = asyncio.run(main())
    assert messages == ["Waiting for a start slot (1 starting, 1 in line)"]


def test_progress_ends_when_the_start_is_refused_before_booting(tmp_path, monkeypatch):
    async def main():
        spawner, _ = _booting_lab(tmp_path, monkeypatch, serving=lambda: asyncio.sleep(0))
        spawner.user_options = {"profile": "no-such-profile"}
        monkeypatch.setattr(GpuDockerSpawner, "profiles_yaml", "")
        spawner._spawn_pending = True
        monkeypatch.setattr(GpuDockerSpawner, "grant_gpus", _refuse)
        with pytest.raises(Exception, match="no GPU free"):
            await spawner.start()
        return [e async for e in spawner.progress()]

    assert asyncio.run(asyncio.wait_for(main(), 5)) == [{"progress": 40, "message": "No GPU for this lab (CPU profile)"}]


def _refuse(self, profile, held):
    from gpuhub.core.allocator import NoGpuAvailable
    raise NoGpuAvailable("no GPU free")


def test_docker_calls_run_on_a_pool_sized_by_the_setting(tmp_path):
    GpuDockerSpawner._executor = None
    spawner = make_spawner(make_config(tmp_path, GPUS, DOCKER_API_THREADS="5"))
    try:
        assert spawner.executor._max_workers == 5
        assert spawner.executor is make_spawner(make_config(tmp_path, GPUS)).executor
    finally:
        GpuDockerSpawner._executor = None


def test_no_lab_starts_while_the_labs_memory_limit_is_not_in_place(tmp_path, monkeypatch):
    from tornado import web

    async def firewall_only(method, *args, **kwargs):
        calls.append(kwargs)
        return [{"Id": "fw"}] if "service=lab-firewall" in str(kwargs) else []

    spawner, calls = _start_without_a_firewall(tmp_path, monkeypatch)
    monkeypatch.setattr(spawner, "docker", firewall_only)
    spawner.require_lab_memory = True
    with pytest.raises(web.HTTPError) as info:
        asyncio.run(spawner.start())
    assert info.value.status_code == 503
    assert "memory limit" in info.value.log_message and "invoke up" in info.value.log_message
    assert calls[-1]["filters"]["label"][-1] == "com.docker.compose.service=lab-memory"
    assert spawner.gpu_ids == [] and spawner.gpu_state.grants.held() == {}


# --- MIG: a profile's gpu_slice is granted an instance of that size ---------------------------

A100 = "GPU-5b0c7a1e-3f2d-4c8b-9a61-7e2f4d3c1b90"
MIG_INVENTORY = [Gpu("0:0", "MIG-1d4e8f20-6a3b-5c7d-8e9f-0a1b2c3d4e51", "A100 MIG 3g.20gb", 20480,
                     A100, "3g.20gb"),
                 Gpu("0:1", "MIG-3f60a142-8c5d-5e9f-a0b1-2c3d4e5f6a73", "A100 MIG 1g.5gb", 5120,
                     A100, "1g.5gb"),
                 Gpu("1", "GPU-6c1d8b2f-4e3a-4d9c-ab72-8f3e5d4c2ca1", "A100", 40960)]
MIG_PROFILES = """
- display_name: CPU
  slug: cpu
- display_name: Whole GPU
  slug: gpu
  gpus: 1
- display_name: Small slice
  slug: small
  gpus: 1
  gpu_slice: 1g.5gb
"""


def mig_spawner(tmp_path, name: str, profile: str) -> GpuDockerSpawner:
    (tmp_path / "profiles.yaml").write_text(MIG_PROFILES)
    c = Config()
    apply_config(c, validate({}), env={"GPUHUB_GPU_INVENTORY": to_json(MIG_INVENTORY)},
                 data_dir=tmp_path, secrets_dir=secrets_dir(tmp_path),
                 profiles_path=tmp_path / "profiles.yaml")
    spawner = make_spawner(c, name)
    spawner.user_options = {"profile": profile}
    return spawner


def test_the_hub_config_names_the_mig_instances_and_their_profiles(tmp_path):
    spawner = mig_spawner(tmp_path, "alice", "small")
    assert spawner.gpu_inventory == [g.uuid for g in MIG_INVENTORY]
    assert spawner.gpu_slices == {MIG_INVENTORY[0].uuid: "3g.20gb",
                                  MIG_INVENTORY[1].uuid: "1g.5gb"}


@pytest.mark.parametrize("profile, granted", [("small", MIG_INVENTORY[1].uuid),
                                              ("gpu", MIG_INVENTORY[2].uuid)])
def test_a_slice_profile_gets_an_instance_and_a_gpu_profile_a_whole_gpu(tmp_path, profile,
                                                                        granted):
    spawner = mig_spawner(tmp_path, "alice", profile)
    chosen = spawner.resolve_profile()
    assert spawner.grant_gpus(chosen, {}) == [granted]
    spawner.gpu_ids = [granted]
    assert spawner.get_env()["NVIDIA_VISIBLE_DEVICES"] == granted
    assert spawner.gpu_host_config()["device_requests"][0]["DeviceIDs"] == [granted]


def test_the_one_small_slice_held_makes_the_next_start_wait_as_for_a_gpu(tmp_path):
    spawner = mig_spawner(tmp_path, "bob", "small")
    with pytest.raises(NoGpuAvailable) as info:
        spawner.grant_gpus(spawner.resolve_profile(), {"alice": [MIG_INVENTORY[1].uuid]})
    assert info.value.reason == "gpus_busy"
    assert "1g.5gb MIG instances you may use are in use" in str(info.value)
