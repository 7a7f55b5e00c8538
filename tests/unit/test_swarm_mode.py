"""Swarm mode without a Swarm: settings, the stack file, GPU reports and the lab service spec."""

import asyncio
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from tornado import web
from traitlets.config import Config

from gpuhub.core import swarm
from gpuhub.core.gpus import Gpu, to_json
from gpuhub.core.profiles import ProfileError, Profiles
from gpuhub.core.settings import SettingsError, validate
from gpuhub.hub.hubconfig import apply_config
from gpuhub.hub.swarmspawner import GpuSwarmSpawner, no_node_reason
from gpuhub.tasks import project as project_mod
from gpuhub.tasks.images import build_commands, push_commands
from support.hubsecrets import secrets_dir
from support.spawners import user_spawner

SWARM = {"MODE": "swarm", "REGISTRY": "registry.example.org:5000/lab",
         "SWARM_HOMES": "/srv/nfs/homes"}
UUIDS = ["GPU-aaaa", "GPU-bbbb"]


def problems(env) -> str:
    with pytest.raises(SettingsError) as err:
        validate(env)
    return " ".join(err.value.problems)


def test_compose_is_the_default_mode():
    assert validate({}).mode == "compose"


@pytest.mark.parametrize("missing", ["REGISTRY", "SWARM_HOMES"])
def test_swarm_mode_names_what_it_still_needs(missing):
    env = {k: v for k, v in SWARM.items() if k != missing}
    assert f"MODE='swarm' in the settings needs {missing}" in problems(env)


@pytest.mark.parametrize("extra, says", [
    ({"GPU_POLICY": "shared"}, "use GPU_POLICY=exclusive"),
    ({"GPU_PINS": "alice=0"}, "pins are not possible in swarm mode"),
    ({"HUB_BIND_ADDRESS": "127.0.0.1"}, "publishes HUB_PORT on every address"),
])
def test_single_host_features_swarm_cannot_offer_are_refused(extra, says):
    assert says in problems({**SWARM, **extra})


def test_host_protection_is_off_in_swarm_mode_unless_asked_for_which_is_refused():
    settings = validate(SWARM)
    assert (settings.docker_socket_proxy, settings.lab_firewall) == (False, False)
    assert validate({}).docker_socket_proxy and validate({}).lab_firewall, "compose: on"
    for name in ("DOCKER_SOCKET_PROXY", "LAB_FIREWALL"):
        assert f"{name}='true' in the settings: swarm mode has no" in problems(
            {**SWARM, name: "true"})
        assert getattr(validate({**SWARM, name: "false"}), name.lower()) is False
    assert "swarm mode has no lab firewall yet" in problems(
        {**SWARM, "LAB_BLOCKED_NETWORKS": "10.0.0.0/8"})


@pytest.mark.parametrize("setting, value", [("MODE", "kubernetes"),
                                            ("REGISTRY", "https://registry.example.org"),
                                            ("SWARM_HOMES", "homes"),
                                            ("SWARM_GPU_RESOURCE", "gpu=1")])
def test_bad_swarm_values_are_named(setting, value):
    assert f"{setting}={value!r}" in problems({**SWARM, setting: value})


def test_image_ref_prefixes_the_registry():
    assert swarm.image_ref(validate(SWARM), "gpuhub-lab:1") == "registry.example.org:5000/lab/gpuhub-lab:1"
    assert swarm.image_ref(validate({}), "gpuhub-lab:1") == "gpuhub-lab:1"


@pytest.fixture
def spec(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("t0k3n\n")
    return swarm.stack_spec(validate({**SWARM, "COMPOSE_PROJECT_NAME": "lab1"}),
                            profiles_path=tmp_path / "profiles.yaml", config_d=tmp_path, secret_file=secret,
                            metrics_secret_file=secret, inventory_json="[]")


def test_stack_pins_hub_and_proxy_to_the_hub_node(spec):
    for name in ("hub", "proxy"):
        deploy = spec["services"][name]["deploy"]
        assert "node.labels.gpuhub.hub == true" in deploy["placement"]["constraints"]
        assert deploy["endpoint_mode"] == "dnsrr"  # no IPVS virtual IP in the path
    assert spec["services"]["proxy"]["ports"] == [
        {"target": 8000, "published": 8000, "protocol": "tcp", "mode": "host"}]
    assert "ports" not in spec["services"]["hub"]  # the hub API stays on the overlay


def test_stack_mounts_and_network(spec):
    hub = spec["services"]["hub"]
    targets = {v["target"]: v["source"] for v in hub["volumes"]}
    assert targets["/var/run/docker.sock"] == "/var/run/docker.sock"
    assert targets[swarm.HOMES_MOUNT] == "/srv/nfs/homes"
    assert targets["/srv/jupyterhub/data"] == "hub-data"
    assert spec["networks"]["labs"] == {"name": "lab1-labs", "driver": "overlay", "attachable": True}
    assert hub["image"] == "registry.example.org:5000/lab/gpuhub-hub:latest"
    assert hub["environment"]["MODE"] == "swarm"
    keeper = spec["services"]["labs-network"]
    assert keeper["deploy"]["mode"] == "global" and keeper["networks"] == ["labs"]


def test_stack_secret_name_follows_its_content(tmp_path, spec):
    name = spec["secrets"]["proxy_auth_token"]["name"]
    assert name.startswith("lab1-proxy-token-")
    (tmp_path / "token").write_text("another\n")
    again = swarm.stack_spec(validate({**SWARM, "COMPOSE_PROJECT_NAME": "lab1"}),
                             profiles_path=tmp_path / "p.yaml", config_d=tmp_path,
                             secret_file=tmp_path / "token",
                             metrics_secret_file=tmp_path / "token", inventory_json="[]")
    assert again["secrets"]["proxy_auth_token"]["name"] != name  # secrets are immutable
    assert json.loads(swarm.stack_yaml(spec)) == spec


NODES = [
    {"ID": "n2id", "Description": {"Hostname": "gpu-a", "Resources": {"GenericResources": [
        {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-bbbb"}},
        {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-aaaa"}},
        {"DiscreteResourceSpec": {"Kind": "SSD", "Value": 1}}]}},
     "Spec": {"Availability": "active"}, "Status": {"State": "ready"}},
    {"ID": "n1id", "Description": {"Hostname": "manager", "Resources": {}},
     "Spec": {"Availability": "active"}, "Status": {"State": "ready"}},
]
TASK = {"Spec": {"ContainerSpec": {"Labels": {"gpuhub.user": "alice", "gpuhub.since": "T1"}}},
        "GenericResources": [{"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-aaaa"}}]}


def test_node_gpus_and_report():
    gpus = swarm.node_gpus(NODES, "NVIDIA-GPU")
    assert [(g.node, g.uuid) for g in gpus] == [("gpu-a", "GPU-aaaa"), ("gpu-a", "GPU-bbbb")]
    rows = swarm.report(gpus, [TASK], "NVIDIA-GPU")
    assert [(r["uuid"], r["held_by"], r["since"]) for r in rows] == [
        ("GPU-aaaa", ["alice"], "T1"), ("GPU-bbbb", [], "")]
    text = swarm.report_text(rows)
    assert "gpu-a" in text and "alice" in text and "ready/active" in text
    assert "No node of this Swarm advertises GPUs" in swarm.report_text([])


def test_assigned_gpus_reads_both_api_spellings():
    assert swarm.assigned_gpus(TASK, "NVIDIA-GPU") == ["GPU-aaaa"]
    documented = {"AssignedGenericResources": TASK["GenericResources"]}
    assert swarm.assigned_gpus(documented, "NVIDIA-GPU") == ["GPU-aaaa"]
    assert swarm.assigned_gpus({}, "NVIDIA-GPU") == []


def test_node_add_text_has_the_gpu_fragment_and_the_join_command():
    text = swarm.node_add_text(join_command="docker swarm join --token SWMTKN-1-x 10.0.0.1:2377",
                               kind="NVIDIA-GPU", labels={"gpu": "a100"})
    assert "docker swarm join --token SWMTKN-1-x 10.0.0.1:2377" in text
    assert 'swarm-resource = "DOCKER_RESOURCE_NVIDIA-GPU"' in text
    assert '"NVIDIA-GPU=" + u' in text and "--label-add gpu=a100" in text


@pytest.mark.parametrize("err, gpus, code, says", [
    ("no suitable node (insufficient resources on 3 nodes)", 1, 409, "no node has 1 free GPU"),
    ("no suitable node (insufficient resources on 3 nodes)", 0, 409, "no node has room"),
    ("no suitable node (scheduling constraints not satisfied on 3 nodes)", 1, 409,
     "placement"),
])
def test_no_node_reason(err, gpus, code, says):
    got, message = no_node_reason(err, gpus, 4)
    assert got == code and says in message


def test_no_node_reason_ignores_other_states():
    assert no_node_reason("", 1, 4) is None


def test_profile_placement_is_validated():
    ok = Profiles.from_yaml("- {display_name: A100, gpus: 1, placement: ['node.labels.gpu == a100']}")
    assert ok.profiles[0].placement == ("node.labels.gpu == a100",)
    with pytest.raises(ProfileError, match="placement must be a list of Swarm constraints"):
        Profiles.from_yaml("- {display_name: A100, placement: 'node.labels.gpu == a100'}")
    with pytest.raises(ProfileError, match="placement must be a list"):
        Profiles.from_yaml("- {display_name: A100, placement: ['gpu == a100']}")


def make_swarm_spawner(tmp_path, env=None, **settings) -> GpuSwarmSpawner:
    c = Config()
    inventory = to_json([Gpu(f"n/{i}", u) for i, u in enumerate(UUIDS)])
    apply_config(c, validate({**SWARM, **settings}),
                 env={"GPUHUB_GPU_INVENTORY": inventory, **(env or {})},
                 data_dir=tmp_path, secrets_dir=secrets_dir(tmp_path))
    assert c.JupyterHub.spawner_class == "gpuhub.hub.swarmspawner.GpuSwarmSpawner"
    spawner = user_spawner(c, cls=GpuSwarmSpawner, groups=[])
    spawner._command = ["jupyterhub-singleuser"]
    return spawner


def test_lab_service_spec(tmp_path):
    spawner = make_swarm_spawner(tmp_path, LAB_MEM_LIMIT="8G")
    spawner.gpu_count = 2
    spawner.placement = ["node.labels.gpu == a100"]
    spawner.user_options = {"profile": "gpu2"}
    specs = spawner.service_specs()
    task = specs["task_template"]
    assert specs["name"] == "gpuhub-lab-alice"
    assert specs["endpoint_spec"]["Mode"] == "dnsrr"
    assert specs["labels"]["gpuhub.profile"] == "gpu2"
    assert task["ContainerSpec"]["Image"] == "registry.example.org:5000/lab/gpuhub-lab:latest"
    assert task["ContainerSpec"]["CapabilityDrop"] == ["ALL"]
    assert task["Resources"]["Reservations"]["GenericResources"] == [
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}}]
    assert task["Resources"]["Limits"]["Pids"] == 1024
    assert task["Resources"]["Limits"]["MemoryBytes"] == 8 * 1024 ** 3
    assert task["RestartPolicy"]["Condition"] == "none"
    assert task["Placement"]["Constraints"] == ["node.labels.gpu == a100"]
    assert task["Networks"] == [{"Target": "gpuhub-labs"}]
    mounts = task["ContainerSpec"]["Mounts"]
    assert [(m["Source"], m["Target"], m["Type"]) for m in mounts] == [
        ("/srv/nfs/homes/alice", "/home/jovyan/work", "bind"), (None, "/tmp", "tmpfs")]
    # LAB_TMP_SIZE (default 1G): /tmp in memory, capped, on whichever node runs the lab
    assert mounts[1]["TmpfsOptions"] == {"SizeBytes": 1024 ** 3, "Mode": 0o1777}
    env = dict(e.split("=", 1) for e in task["ContainerSpec"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"


def _node(memory: int, availability: str = "active") -> dict:
    return {"Description": {"Resources": {"MemoryBytes": memory}},
            "Spec": {"Availability": availability}}


def test_auto_memory_fits_the_smallest_node_a_lab_may_land_on(tmp_path):
    gib = 1024 ** 3
    nodes = [_node(256 * gib), _node(32 * gib), _node(8 * gib, "drain"), {}]
    assert swarm.smallest_node_memory(nodes) == 32 * gib
    assert swarm.smallest_node_memory([_node(8 * gib, "drain")]) == 0
    secret = tmp_path / "token"
    secret.write_text("t0k3n\n")
    spec = swarm.stack_spec(validate(SWARM), profiles_path=tmp_path / "p.yaml", config_d=tmp_path,
                            secret_file=secret, metrics_secret_file=secret,
                            inventory_json="[]", lab_host_memory=32 * gib)
    env = spec["services"]["hub"]["environment"]
    assert env["GPUHUB_LAB_HOST_MEMORY"] == str(32 * gib)
    # The hub on the manager (256 GiB) then limits every lab to what the 32 GiB node has.
    spawner = make_swarm_spawner(tmp_path, env={"GPUHUB_LAB_HOST_MEMORY": str(32 * gib)})
    assert spawner.service_specs()["task_template"]["Resources"]["Limits"]["MemoryBytes"] == (
        int(32 * gib * 0.9) // 1024 ** 2 * 1024 ** 2)


def test_labs_do_not_queue_for_the_hubs_cores_in_swarm_mode(tmp_path):
    spawner = make_swarm_spawner(tmp_path, LAB_START_CONCURRENCY="2")
    assert spawner.lab_start_concurrency == 0


def test_cpu_lab_asks_for_no_gpu(tmp_path):
    spawner = make_swarm_spawner(tmp_path)
    task = spawner.service_specs()["task_template"]
    assert "Reservations" not in task["Resources"] or not task["Resources"]["Reservations"]


def test_gpu_limit_is_checked_before_swarm_is_asked(tmp_path):
    spawner = make_swarm_spawner(tmp_path, GPU_LIMITS="*=1")
    spawner.profiles_yaml = "- {display_name: Two, slug: gpu2, gpus: 2}"
    spawner.user_options = {"profile": "gpu2"}
    with pytest.raises(web.HTTPError) as err:
        asyncio.run(spawner.start())
    assert err.value.status_code == 409 and "your limit is 1" in err.value.log_message


def test_pending_task_without_room_fails_fast(tmp_path):
    spawner = make_swarm_spawner(tmp_path)
    spawner.gpu_count = 1
    pending = {"ID": "t1", "Status": {"State": "pending",
                                      "Err": "no suitable node (insufficient resources on 3 nodes)"}}

    async def get_task():
        return pending
    spawner.get_task = get_task
    with pytest.raises(web.HTTPError) as err:
        asyncio.run(spawner.start_object())
    assert err.value.status_code == 409 and "no node has 1 free GPU" in err.value.log_message


def test_poll_treats_a_moved_lab_as_stopped(tmp_path):
    spawner = make_swarm_spawner(tmp_path)
    spawner.task_id = "t1"
    tasks = iter([{"ID": "t1", "Status": {"State": "running"}},
                  {"ID": "t2", "Status": {"State": "running"}},
                  {"ID": "t1", "Status": {"State": "shutdown"}}])

    async def get_task():
        return next(tasks)
    spawner.get_task = get_task
    assert asyncio.run(spawner.poll()) is None
    assert "moved by Swarm" in asyncio.run(spawner.poll())
    assert asyncio.run(spawner.poll()) == "task shutdown"
    assert spawner.get_state()["task_id"] == "t1"


def test_home_folder_is_created_for_the_lab_user(tmp_path, monkeypatch):
    spawner = make_swarm_spawner(tmp_path)
    spawner.homes_dir = str(tmp_path / "homes")
    (tmp_path / "homes").mkdir()
    chowned = []
    monkeypatch.setattr("os.chown", lambda path, uid, gid: chowned.append((str(path), uid, gid)))
    spawner.ensure_home()
    spawner.ensure_home()  # already there: left alone
    assert (tmp_path / "homes" / "alice").is_dir()
    assert chowned == [(str(tmp_path / "homes" / "alice"), swarm.LAB_UID, swarm.LAB_GID)]


def test_build_tags_and_pushes_to_the_registry(tmp_path):
    env = tmp_path / ".env"
    env.write_text("".join(f"{k}={v}\n" for k, v in SWARM.items()))
    project = project_mod.load(environ={"GPUHUB_ENV_FILE": str(env)})
    hub_cmd = build_commands(project, lab=False)[0]
    assert "-t gpuhub-hub:latest -t registry.example.org:5000/lab/gpuhub-hub:latest" in hub_cmd
    assert push_commands(project) == [
        "docker push registry.example.org:5000/lab/gpuhub-hub:latest",
        "docker push registry.example.org:5000/lab/gpuhub-lab:latest"]
    assert project.exec_hub("id").startswith("docker exec -i ")
    assert "label=com.docker.swarm.service.name=gpuhub_hub" in project.hub_container()


def test_gpu_board_reads_the_swarm():
    from gpuhub.hub import telemetry

    class FakeApi:
        def services(self, filters):
            assert filters == {"label": "gpuhub.project=gpuhub"}
            return [{"ID": "svc1"}]

        def tasks(self, filters):
            assert filters == {"service": "svc1", "desired-state": "running"}
            return [TASK]

    class FakeClient:
        api = FakeApi()
        nodes = SimpleNamespace(list=lambda: [SimpleNamespace(attrs=n) for n in NODES])

    board = telemetry.swarm_board(validate(SWARM), FakeClient())
    assert [(r["node"], r["uuid"], r["held_by"]) for r in board.rows] == [
        ("gpu-a", "GPU-aaaa", ["alice"]), ("gpu-a", "GPU-bbbb", [])]
    assert board.problem == "utilisation is not sampled in swarm mode"
    assert all(r["utilisation"] is None for r in board.rows)


def test_lab_command_is_looked_up_once_and_pulled_by_tag_when_missing(tmp_path, monkeypatch):
    import docker

    monkeypatch.setattr(GpuSwarmSpawner, "_image_commands", {})
    spawner = make_swarm_spawner(tmp_path)
    calls = []
    have_tag = []

    async def fake_docker(method, *args, **kw):
        calls.append((method, args))
        if method == "inspect_image" and not have_tag:
            raise docker.errors.ImageNotFound("no tag here")
        if method == "pull":
            have_tag.append(True)
            return None
        return {"Config": {"Cmd": ["start-notebook.py"]}}
    spawner.docker = fake_docker
    first = asyncio.run(spawner.get_command())
    second = asyncio.run(spawner.get_command())
    assert first[0] == "start-notebook.py" and first == second
    assert [m for m, _ in calls] == ["inspect_image", "pull", "inspect_image"]
    assert calls[1][1] == ("registry.example.org:5000/lab/gpuhub-lab", "latest")


def test_the_swarm_spawn_form_does_not_claim_to_know_free_gpus(tmp_path):
    profiles = "- display_name: CPU only\n- display_name: 1 GPU\n  gpus: 1\n"
    spawner = make_swarm_spawner(tmp_path)
    spawner.profiles_yaml = profiles
    form = asyncio.run(spawner.get_options_form())
    assert "<strong>1 GPU</strong></label>" in form and "free" not in form


def test_the_runtime_is_told_the_variable_swarm_fills_in_upper_case():
    """swarmkit api/genericresource/string.go EnvFormat upper-cases prefix and kind."""
    assert swarm.resource_env("gpu") == "DOCKER_RESOURCE_GPU"
    assert swarm.resource_env("nvidia-gpu") == "DOCKER_RESOURCE_NVIDIA-GPU"
    text = swarm.node_add_text(join_command="docker swarm join x", kind="gpu", labels={})
    assert 'swarm-resource = "DOCKER_RESOURCE_GPU"' in text
    assert "toolkit 1.19 or newer" in text and 'mode = "legacy"' in text


# --- a node whose NVIDIA runtime ignores Swarm's grant (toolkit 1.18.x) -------------------


def _labstart():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "jupyterlab" / "gpuhub_labstart.py"
    spec = importlib.util.spec_from_file_location("gpuhub_labstart_for_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_swarm_lab_with_fewer_gpus_than_granted_refuses_to_start_and_says_why():
    labstart = _labstart()
    granted = {"GPUHUB_SWARM_GPUS": "1", "DOCKER_RESOURCE_NVIDIA-GPU": "GPU-aaaa"}
    said = labstart.missing_swarm_gpus(granted, run=lambda: "")
    assert said.startswith("gpuhub: Swarm granted this lab 1 GPU(s) "
                           "(DOCKER_RESOURCE_NVIDIA-GPU=GPU-aaaa), but this node's NVIDIA "
                           "runtime gave it 0: NVIDIA container toolkit 1.18.x")
    assert labstart.missing_swarm_gpus(
        granted, run=lambda: "GPU 0: Tesla T4 (UUID: GPU-aaaa)\n") == ""
    mig = "GPU 0: A100 (UUID: GPU-p)\n  MIG 1g.10gb     Device  0: (UUID: MIG-x)\n"
    assert labstart.missing_swarm_gpus({**granted, "GPUHUB_SWARM_GPUS": "2"}, run=lambda: mig) == ""
    assert labstart.missing_swarm_gpus({"GPUHUB_SWARM_GPUS": "0"}, run=lambda: "") == ""
    assert labstart.missing_swarm_gpus({}, run=lambda: "") == ""  # compose mode: not asked


def test_the_hub_says_the_labs_own_line_from_its_log():
    from gpuhub.hub.swarmspawner import gpuhub_line

    log = (b"some output\n"
           b"gpuhub: Swarm granted this lab 1 GPU(s) (...), but this node's runtime gave it 0\n")
    assert gpuhub_line(log) == "Swarm granted this lab 1 GPU(s) (...), but this node's runtime gave it 0"
    assert gpuhub_line(iter([b"a\n", b"gpuhub: one\n", b"gpuhub: two\n"])) == "two"
    assert gpuhub_line("nothing here") == ""


def test_swarm_up_refuses_a_profile_asking_for_mig_slices_before_building():
    from invoke import Exit

    from gpuhub.tasks import swarmstack

    sliced = Profiles.from_yaml("- display_name: Small\n  slug: small\n  gpus: 1\n"
                                "  gpu_slice: 1g.5gb\n- display_name: Whole\n  slug: whole\n"
                                "  gpus: 1\n")
    with pytest.raises(Exit) as refused:
        swarmstack.up(None, None, build=True, timeout=1, profiles=sliced,
                      hub_was_running=False, proxy_was_running=False)
    assert "profile(s) small in PROFILES_FILE ask for MIG instances (gpu_slice): swarm mode " \
           "hands out whole GPUs only" in str(refused.value)
    swarmstack.refuse_mig_slices(Profiles.from_yaml("- display_name: Whole\n  slug: whole\n"
                                                    "  gpus: 1\n"))  # no slice: nothing said


def test_a_stop_returns_once_the_old_labs_container_has_ended(tmp_path):
    """Until the old task's container has stopped, the service's name still resolves to it:
    a Start right after a Stop would take the old lab's answer as the new lab's."""
    import docker

    spawner = make_swarm_spawner(tmp_path)
    spawner.object_id = "svc1"
    calls = []
    states = iter(["running", "running", "shutdown"])

    async def fake_docker(method, *args, **kwargs):
        calls.append((method, args, kwargs))
        if method == "tasks":
            assert kwargs == {"filters": {"service": "svc1"}}
            return [{"ID": "t1", "Status": {"State": "running"}},
                    {"ID": "t0", "Status": {"State": "shutdown"}}]  # an earlier task: ended
        if method == "inspect_task":
            assert args == ("t1",)
            return {"ID": "t1", "Status": {"State": next(states)}}
        if method == "remove_service":
            return None
        raise AssertionError(method)

    spawner.docker = fake_docker
    asyncio.run(spawner.remove_object())
    assert [m for m, _, _ in calls] == ["tasks", "remove_service", "inspect_task",
                                        "inspect_task", "inspect_task"]

    # A task Swarm already deleted counts as ended; an empty object ID lists nothing.
    calls.clear()

    def inspect_task_raises(error):
        async def fake(method, *args, **kwargs):
            calls.append(method)
            if method == "inspect_task":
                raise error
            return [{"ID": "t1", "Status": {"State": "running"}}] if method == "tasks" else None
        return fake

    gone = inspect_task_raises(docker.errors.NotFound("no such task"))
    spawner.docker = gone
    asyncio.run(spawner.remove_object())
    assert calls == ["tasks", "remove_service", "inspect_task"]
    # Docker failing to answer for the task: the service is removed, the stop ends.
    calls.clear()
    spawner.docker = inspect_task_raises(docker.errors.APIError("500 Server Error"))
    asyncio.run(spawner.remove_object())
    assert calls == ["tasks", "remove_service", "inspect_task"]
    calls.clear()
    spawner.docker = gone
    spawner.object_id = ""
    asyncio.run(spawner.remove_object())
    assert calls == ["remove_service"]


def test_the_stack_reaches_docker_as_a_private_file_not_on_standard_input():
    """Invoke feeds an in_stream one byte every 10 ms: the compose file (kilobytes) held every
    deploy for over a minute. It is a file in a folder only its owner can read, gone after."""
    from gpuhub.tasks import swarmstack

    seen = {}

    class Context:
        def run(self, command, **kwargs):
            args = shlex.split(command)
            path = Path(args[args.index("-c") + 1])
            seen.update(command=args, kwargs=kwargs, text=path.read_text(),
                        folder_mode=path.parent.stat().st_mode & 0o777, path=path)
            return "result"

    yaml_text = "services:\n  hub: {image: 'x'}\n" * 200
    assert swarmstack.stack_deploy(Context(), "gpuhub-x", yaml_text) == "result"
    assert seen["command"][:4] == ["docker", "stack", "deploy", "--prune"]
    assert seen["command"][-1] == "gpuhub-x" and "-" not in seen["command"]
    assert "in_stream" not in seen["kwargs"]
    assert seen["text"] == yaml_text and seen["folder_mode"] == 0o700
    assert not seen["path"].exists()
