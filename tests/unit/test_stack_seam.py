"""The seam between the modes: composestack and swarmstack offer the same functions
(deployment.StackMode), and `project.load` is the one place that picks between them."""

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from invoke import Exit, Result

from gpuhub.tasks import composestack, swarmstack
from gpuhub.tasks import project as project_mod
from gpuhub.tasks import statustables as status_tables
from harness import ROOT
from support.mock_docker import commands, docker_context
from support.tasks import assert_one_line_error

# The seam itself is gpuhub.tasks.deployment.StackMode, a Protocol that mypy (nox -s lint)
# holds both modules to, and an import contract (pyproject.toml) lets only project pick a
# mode; test_a_mode_that_leaves_the_seam_fails_the_type_check sees the first fail.
# What the tasks use of a work folder (purge, backup, restore).
FOLDER = ("key", "mount", "what", "by_hand", "exists", "create_command", "remove_command")


def test_a_mode_that_leaves_the_seam_fails_the_type_check(tmp_path):
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "gpuhub", copy / "gpuhub", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    mode = copy / "gpuhub" / "tasks" / "swarmstack.py"
    text = mode.read_text()
    assert "def logs(c, project, follow: bool, tail: int)" in text
    mode.write_text(text.replace("def logs(c, project, follow: bool, tail: int)",
                                 "def logs(c, project, follow: bool)"))
    mypy = Path(sys.executable).with_name("mypy")
    result = subprocess.run([str(mypy), "--no-incremental"], cwd=copy, capture_output=True,
                            text=True)
    assert result.returncode == 1 and "StackMode" in result.stdout, result.stdout


def project(tmp_path, **settings):
    env = tmp_path / "test.env"
    env.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return project_mod.load(environ={"GPUHUB_ENV_FILE": str(env)})


def swarm_project(tmp_path, **settings):
    homes = tmp_path / "homes"
    homes.mkdir(exist_ok=True)
    return project(tmp_path, MODE="swarm", REGISTRY="127.0.0.1:5000", SWARM_HOMES=str(homes),
                   **settings)


def test_the_settings_mode_picks_the_stack(tmp_path):
    assert project(tmp_path).stack is composestack
    assert swarm_project(tmp_path).stack is swarmstack


def test_both_modes_work_folders_offer_the_same(tmp_path):
    for folder in (composestack.work_folder(project(tmp_path), "Ann Lee"),
                   swarmstack.work_folder(swarm_project(tmp_path), "Ann Lee")):
        missing = [a for a in FOLDER if not hasattr(folder, a)]
        assert not missing, (type(folder).__name__, missing)


def test_a_work_folder_is_keyed_by_the_escaped_user_name(tmp_path):
    compose, swarm = (composestack.work_folder(project(tmp_path), "ann.lee"),
                      swarmstack.work_folder(swarm_project(tmp_path), "ann.lee"))
    assert compose.key == swarm.key == "ann-2elee"
    assert compose.mount == "gpuhub-home-ann-2elee"
    assert swarm.mount == str(tmp_path / "homes" / "ann-2elee")


# --- swarm: the folders under SWARM_HOMES ---------------------------------------------

def test_swarm_backs_up_every_folder_under_swarm_homes_and_no_link(tmp_path, capsys):
    p = swarm_project(tmp_path)
    homes = tmp_path / "homes"
    for name in ("alice", "carol"):  # carol was deleted, her folder kept
        (homes / name).mkdir()
    (homes / "evil").symlink_to("/etc")
    (homes / "notes.txt").write_text("not a folder\n")
    found = swarmstack.work_folders(docker_context(running=True), p)
    assert [(f.key, f.mount) for f in found] == [("alice", str(homes / "alice")),
                                                 ("carol", str(homes / "carol"))]
    err = capsys.readouterr().err
    assert f"{homes / 'evil'} is not a work folder" in err and "not backed up" in err
    assert f"{homes / 'notes.txt'} is not a work folder" in err


def test_swarm_refuses_work_folders_when_swarm_homes_is_not_here(tmp_path):
    p = swarm_project(tmp_path)
    os.rmdir(tmp_path / "homes")
    with pytest.raises(Exit) as info:
        swarmstack.work_folders(docker_context(running=True), p)
    assert_one_line_error(info, "SWARM_HOMES=", "is not a folder on this node")


@pytest.mark.parametrize("key", ["..", ".", "", ".hidden", "a/b", "../../etc"])
def test_swarm_restore_never_makes_a_folder_outside_swarm_homes(tmp_path, key):
    with pytest.raises(Exit) as info:
        swarmstack.archived_work_folder(swarm_project(tmp_path), key)
    assert_one_line_error(info, "cannot be a folder under SWARM_HOMES", "nothing was changed")


def test_swarm_makes_and_removes_a_restored_folder_in_a_helper_of_the_hub_image(tmp_path):
    folder = swarmstack.archived_work_folder(swarm_project(tmp_path), "alice")
    homes = tmp_path / "homes"
    image = "127.0.0.1:5000/gpuhub-hub:latest"  # as this manager pulled it for the hub
    assert folder.create_command(image) == (f"docker run --rm --network none -v {homes}:/homes "
                                            f"{image} mkdir -- /homes/alice")
    assert folder.remove_command(image) == (f"docker run --rm --network none -v {homes}:/homes "
                                            f"{image} rm -rf -- /homes/alice")


# --- swarm: status at a glance ---------------------------------------------------------

def test_swarm_status_is_the_same_two_short_tables(tmp_path, capsys):
    p = swarm_project(tmp_path)
    started = "2026-12-01T20:00:00.123456789Z"
    tasks = [{"ID": "t1", "ServiceID": "hubsvc0123456789", "NodeID": "n1", "Slot": 1,
              "Status": {"State": "running", "Timestamp": started,
                         "ContainerStatus": {"ContainerID": "c1"}}},
             {"ID": "t2", "ServiceID": "keepsvc0123456789", "NodeID": "n2",
              "Status": {"State": "running", "Timestamp": started,
                         "ContainerStatus": {"ContainerID": "c2"}}}]
    lab = {"ID": "t3", "Spec": {"ContainerSpec": {"Labels": {
        "gpuhub.user": "bob", "gpuhub.profile": "gpu1",
        "gpuhub.since": "2026-12-01T21:00:00+00:00"}}},
        "NodeID": "n2", "Status": {"State": "running"}, "AssignedGenericResources": [
            {"DiscreteResourceSpec": None, "NamedResourceSpec": {"Kind": "NVIDIA-GPU",
                                                                 "Value": "GPU-aaa"}}]}
    nodes = [{"ID": "n1", "Description": {"Hostname": "node1"}},
             {"ID": "n2", "Description": {"Hostname": "node2"}}]
    c = docker_context(
        ("docker stack ps -q --filter desired-state=running gpuhub", Result("t1\nt2\n")),
        ("docker inspect t1 t2", Result(json.dumps(tasks))),
        ("docker service ls --filter label=com.docker.stack.namespace=gpuhub "
         "--format '{{.ID}} {{.Name}}'", Result("hubsvc012345 gpuhub_hub\n"
                                                "keepsvc01234 gpuhub_labs-network\n")),
        ("docker node ls -q", Result("n1\nn2\n")),
        ("docker node inspect n1 n2", Result(json.dumps(nodes))),
        # c2 runs on another node: this one cannot inspect it.
        ("docker inspect c1 c2", Result(json.dumps([{"Id": "c1", "State": {
            "Health": {"Status": "healthy"}}}]), stderr="Error: No such object: c2", exited=1)),
        (f"docker service ls -q --filter {swarmstack.swarm.project_filter('gpuhub')}",
         Result("labsvc\n")),
        ("docker service ps -q --filter desired-state=running labsvc", Result("t3\n")),
        ("docker inspect t3", Result(json.dumps([lab]))), running=True)
    swarmstack.status(c, p)
    out = capsys.readouterr().out
    services, labs = out.split("\n\n")
    lines = services.splitlines()
    assert lines[0].split() == ["SERVICE", "NODE", "STATE", "HEALTH", "SINCE"]
    assert lines[1].split()[:4] == ["hub", "node1", "running", "healthy"]
    assert lines[2].split()[:4] == ["labs-network", "node2", "running", "-"]
    assert "2026-12-01 20:00 UTC" in lines[1]
    assert labs.splitlines()[0].split() == ["USER", "PROFILE", "GPUS", "SINCE"]
    assert labs.splitlines()[1].split()[:3] == ["bob", "gpu1", "GPU-aaa"]
    assert max(len(line) for line in out.splitlines()) < 100
    assert "docker stack ps --filter" not in " ".join(commands(c)), "no raw table"


def test_swarm_status_of_a_stack_that_is_not_deployed(tmp_path):
    now = datetime.datetime.now(datetime.UTC)
    assert status_tables.swarm_services_table([], {}, {}, {}, now) == (
        "No service of this stack runs: `invoke up`.")


SERVICE_IMAGE = ("docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' "
                 "gpuhub_hub")
PINNED = "127.0.0.1:5000/gpuhub-hub:latest@sha256:" + "a" * 64


def test_swarm_helpers_run_the_image_the_hubs_service_runs(tmp_path):
    c = docker_context((SERVICE_IMAGE, Result(PINNED + "\n")), running=True)
    assert swarmstack.helper_image(c, swarm_project(tmp_path)) == PINNED
    assert commands(c) == [SERVICE_IMAGE, f"docker image inspect {PINNED}"]


def test_swarm_helpers_pull_the_hub_image_when_no_hub_runs_here(tmp_path):
    image = "127.0.0.1:5000/gpuhub-hub:latest"
    c = docker_context((SERVICE_IMAGE, Result(stderr="Error: no such service", exited=1)),
                       (f"docker image inspect {image}", Result(exited=1)), running=False)
    assert swarmstack.helper_image(c, swarm_project(tmp_path)) == image
    assert commands(c)[-1] == f"docker pull {image}"


def test_swarm_helpers_without_the_hub_image_say_how_to_get_it(tmp_path):
    image = "127.0.0.1:5000/gpuhub-hub:latest"
    c = docker_context((SERVICE_IMAGE, Result(exited=1)),
                       (f"docker image inspect {image}", Result(exited=1)),
                       (f"docker pull {image}", Result(stderr="manifest unknown\n", exited=1)),
                       running=False)
    with pytest.raises(Exit) as info:
        swarmstack.helper_image(c, swarm_project(tmp_path))
    assert_one_line_error(info, f"could not pull the hub image {image!r}", "manifest unknown",
                          "invoke build --push")


def test_status_says_which_labs_run_an_image_rebuilt_since_they_started():
    now = datetime.datetime(2026, 12, 6, 12, 0, tzinfo=datetime.UTC)

    def lab(user: str, image_id: str) -> dict:
        return {"Image": image_id, "Config": {"Image": "gpuhub-lab:latest", "Labels": {
            "gpuhub.user": user, "gpuhub.profile": "cpu", "gpuhub.gpus": "[]",
            "gpuhub.since": "2026-12-06T11:00:00+00:00"}}}

    text = status_tables.labs_table([lab("ann", "sha256:new"), lab("bob", "sha256:old")], now,
                                    {"gpuhub-lab:latest": "sha256:new"})
    rows = {line.split()[0]: line for line in text.splitlines()[1:3]}
    assert text.splitlines()[0].split()[-1] == "IMAGE"
    assert rows["ann"].endswith(status_tables.IMAGE_CURRENT)
    assert rows["bob"].endswith(status_tables.IMAGE_OLD)
    assert text.splitlines()[-1].startswith("1 lab(s) run an image that has been rebuilt")
    # An image name this host no longer has: nothing to compare, not called old.
    assert status_tables.IMAGE_OLD not in status_tables.labs_table([lab("bob", "x")], now, {})
