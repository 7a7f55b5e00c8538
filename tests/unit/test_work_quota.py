"""WORK_QUOTA, LAB_TMP_SIZE and LAB_DISK_LIMIT without Docker: the settings, the broker's
plan, what btrfs prints and how it is read, what `invoke up` finds, and what the hub shows.
The live tests are in tests/integration/test_work_quota.py (a real btrfs, a real stack, and
a second Docker engine on btrfs storage)."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
from invoke import Result
from invoke.exceptions import Exit

from gpuhub.broker.policy import Call, Refused
from gpuhub.broker.workfolders import Use, WorkFolders, parse_qgroups
from gpuhub.core import lablimits, workuse
from gpuhub.core.settings import SettingsError, validate
from gpuhub.hub.workfolders import WorkFolderCollector, WorkUse, template_vars
from gpuhub.tasks import composestack
from gpuhub.tasks.project import load
from harness.fake_docker import GPUS, LAB_IMAGE, PROJECT, SHARED, policy
from harness.hostile_docker import gpuhub_create
from support.mock_docker import commands, docker_context

CREATE = f"/v1.41/containers/create?name={PROJECT}-lab-bob"
# What Docker 20.10's overlay2 says to --storage-opt size on ext4 (this machine's storage).
OVERLAY_REFUSAL = ("Error response from daemon: --storage-opt is supported only for overlay "
                   "over xfs with 'pquota' mount option")
QUOTA = 64 * 1024 ** 2
# `btrfs qgroup show --raw -re` of btrfs-progs 6.2 (Debian 12), as it printed on this machine.
QGROUPS = """\
Qgroupid    Referenced    Exclusive  Max referenced  Max exclusive   Path
--------    ----------    ---------  --------------  -------------   ----
0/5              16384        16384            none           none   <toplevel>
0/256         52412416     52412416        52428800           none   alice
0/257            16384        16384        67108864           none   bob
1/100            16384        16384            none           none   <0 member qgroups>
"""


# --- settings ---------------------------------------------------------------------------

def test_no_quota_and_a_one_gigabyte_tmp_by_default():
    s = validate({})
    assert (s.work_quota, s.work_root, s.lab_tmp_size) == ("none", None, "1G")
    assert lablimits.optional_bytes(s.work_quota) == 0
    assert lablimits.lab_tmp("1G") == {"/tmp": f"rw,nosuid,nodev,size={1024 ** 3},mode=1777"}
    assert lablimits.lab_tmp("none") == {}


@pytest.mark.parametrize(("env", "says"), [
    ({"WORK_QUOTA": "50G"}, "needs WORK_ROOT"),
    ({"WORK_ROOT": "/srv/work"}, "used only with WORK_QUOTA"),
    ({"WORK_QUOTA": "50G", "WORK_ROOT": "/srv/my work"}, "plain ASCII without spaces"),
    ({"WORK_QUOTA": "50G", "WORK_ROOT": "/srv/a,b"}, "commas"),
    ({"WORK_QUOTA": "50G", "WORK_ROOT": "/srv/work/"}, "trailing /"),
    ({"WORK_QUOTA": "50G", "WORK_ROOT": "srv/work"}, "absolute path"),
    ({"WORK_QUOTA": "50", "WORK_ROOT": "/srv/work"}, "needs a unit"),
    ({"WORK_QUOTA": "50G", "WORK_ROOT": "/srv/work", "DOCKER_SOCKET_PROXY": "false"},
     "needs DOCKER_SOCKET_PROXY=true"),
    ({"WORK_QUOTA": "50G", "WORK_ROOT": "/srv/work", "MODE": "swarm",
      "REGISTRY": "r.example.org", "SWARM_HOMES": "/srv/nfs"}, "swarm mode keeps work folders"),
    ({"LAB_TMP_SIZE": "lots"}, "LAB_TMP_SIZE='lots'"),
])
def test_quota_settings_that_cannot_work_are_refused_with_the_fix(env, says):
    with pytest.raises(SettingsError) as err:
        validate(env)
    assert says in str(err.value)


# --- the broker's plan -------------------------------------------------------------------

def quota_policy(**more):
    return dataclasses.replace(policy(), work_quota=QUOTA, **more)


def test_with_a_quota_a_labs_create_first_makes_its_work_folder():
    body = json.dumps(gpuhub_create(PROJECT, LAB_IMAGE, GPUS[0], SHARED)).encode()
    plan = quota_policy().plan(Call("POST", CREATE, body))
    assert (plan.work_folder, plan.image) == ("bob", LAB_IMAGE)
    assert policy().plan(Call("POST", CREATE, body)).work_folder is None  # no quota


def test_with_a_quota_removing_a_work_volume_removes_its_folder_too():
    target = f"/v1.41/volumes/{PROJECT}-home-bob"
    assert quota_policy().plan(Call("DELETE", target)).removes_work_folder == "bob"
    assert quota_policy().plan(Call("GET", target)).removes_work_folder is None
    assert policy().plan(Call("DELETE", target)).removes_work_folder is None


def test_the_work_folder_report_is_the_brokers_own_answer_and_only_with_a_quota():
    assert quota_policy().plan(Call("GET", "/gpuhub/work-folders")).local == "work-folders"
    with pytest.raises(Refused) as err:
        policy().plan(Call("GET", "/gpuhub/work-folders"))
    assert err.value.status == 404


def test_every_lab_gets_the_tmp_of_the_setting_whatever_the_hub_asks():
    options = lablimits.lab_tmp("64M")["/tmp"]
    checked = quota_policy(tmp_options=options)
    create = gpuhub_create(PROJECT, LAB_IMAGE, GPUS[0], SHARED)
    built = json.loads(checked.plan(Call("POST", CREATE, json.dumps(create).encode())).body)
    assert built["HostConfig"]["Tmpfs"] == {"/tmp": options}
    create["HostConfig"]["Tmpfs"] = {"/tmp": options.replace("64", "99")}
    with pytest.raises(Refused, match="HostConfig.Tmpfs"):
        checked.plan(Call("POST", CREATE, json.dumps(create).encode()))
    # A lab recorded without it breaks the hardening (it is checked again at start).
    info = {"Name": f"/{PROJECT}-lab-bob", "Config": {"Labels": {"gpuhub.project": PROJECT,
                                                                  "gpuhub.user": "bob"}},
            "HostConfig": {**built["HostConfig"], "Tmpfs": None}}
    assert "tmpfs None" in checked.hardening_problems(info)


# --- btrfs ---------------------------------------------------------------------------------

def test_quota_groups_are_read_by_column_and_only_level_zero():
    assert parse_qgroups(QGROUPS) == {5: Use(16384, 0), 256: Use(52412416, 52428800),
                                      257: Use(16384, QUOTA)}


@pytest.mark.parametrize("text", [
    "", "ERROR: can't list qgroups: quotas not enabled\n",
    QGROUPS.replace("52412416     52412416", "52.4MiB     52.4MiB"),  # not --raw
    QGROUPS.replace("0/256", "0-256"),
])
def test_a_quota_table_in_another_shape_is_refused_not_guessed(text):
    with pytest.raises(ValueError):
        parse_qgroups(text)


def test_a_work_volume_is_bound_to_the_users_subvolume(tmp_path):
    folders = WorkFolders(PROJECT, str(tmp_path), QUOTA, docker=None)
    body = folders.volume_body("bob")
    assert body == {"Name": f"{PROJECT}-home-bob", "Driver": "local", "Labels": {},
                    "DriverOpts": {"type": "none", "o": "bind", "device": f"{tmp_path}/bob"}}
    assert folders.is_bound({"Driver": "local", "Options": body["DriverOpts"]}, "bob")
    assert not folders.is_bound({"Driver": "local", "Options": None}, "bob")  # a plain one
    assert not folders.is_bound({"Driver": "local", "Options": {
        **body["DriverOpts"], "device": f"{tmp_path}/alice"}}, "bob")


# --- what the hub shows ----------------------------------------------------------------------

REPORT = json.dumps({"quota": QUOTA, "folders": {
    "alice": {"used": QUOTA - 1024, "limit": QUOTA}, "bob": {"used": 5 * 1024 ** 2, "limit": QUOTA}}})


def test_the_report_reads_strictly_and_says_sizes_as_an_admin_reads_them():
    report = workuse.parse(REPORT.encode())
    assert workuse.text(report["bob"]) == "5.0 MiB of 64.0 MiB"
    assert workuse.text(workuse.FolderUse(3 * 1024 ** 3, 50 * 1024 ** 3)) == "3.0 GiB of 50.0 GiB"
    assert workuse.text(None) == "-"
    for bad in (b"[]", b'{"folders": {"a": {"used": "1", "limit": 2}}}',
                b'{"folders": {"a": {"used": true, "limit": 2}}}', b"{"):
        with pytest.raises(ValueError):
            workuse.parse(bad)


def test_a_full_user_reads_one_line_and_admins_see_who_is_full():
    use = WorkUse("tcp://docker-proxy:2375", fetch=lambda host: workuse.parse(REPORT.encode()))
    use.refresh()
    alice, bob = (types.SimpleNamespace(name=n, admin=a) for n, a in (("alice", False),
                                                                       ("bob", True)))
    note, full = (template_vars(use)[key] for key in ("gpuhub_work_folder_note",
                                                      "gpuhub_full_work_folders"))
    assert note(alice) == ("Your work folder is full: 64.0 MiB of 64.0 MiB. Writes to ~/work "
                           'fail with "Disk quota exceeded" until you delete files there (or '
                           "ask your admin for more room).")
    assert note(bob) == "" and note(None) == ""
    assert full(bob) == "Work folders that are full (WORK_QUOTA): alice (64.0 MiB of 64.0 MiB)"
    assert full(alice) == ""  # not an admin
    assert template_vars(None) == {"gpuhub_work_folder_note": "",
                                   "gpuhub_full_work_folders": ""}


def test_each_work_folder_is_a_metric():
    use = WorkUse("tcp://docker-proxy:2375", fetch=lambda host: workuse.parse(REPORT.encode()))
    use.refresh()
    families = {f.name: {s.labels["user"]: s.value for s in f.samples}
                for f in WorkFolderCollector(use).collect()}
    assert families == {"gpuhub_work_folder_used_bytes": {"alice": QUOTA - 1024,
                                                          "bob": 5 * 1024 ** 2},
                        "gpuhub_work_folder_limit_bytes": {"alice": QUOTA, "bob": QUOTA}}


def test_no_report_keeps_the_last_and_says_why_once(caplog):
    answers = [workuse.parse(REPORT.encode()), OSError("connection refused")]

    def fetch(host):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    use = WorkUse("tcp://docker-proxy:2375", fetch=fetch)
    use.refresh()
    use.refresh()
    assert set(use.report) == {"alice", "bob"} and "connection refused" in use.problem


# --- the writable layer (LAB_DISK_LIMIT) -------------------------------------------------------

def test_every_lab_gets_the_writable_layer_limit_whatever_the_hub_asks():
    limit = 20 * 1024 ** 3
    checked = dataclasses.replace(policy(), disk_limit=limit)
    create = gpuhub_create(PROJECT, LAB_IMAGE, GPUS[0], SHARED)
    built = json.loads(checked.plan(Call("POST", CREATE, json.dumps(create).encode())).body)
    assert built["HostConfig"]["StorageOpt"] == {"size": str(limit)}
    for other in ({"size": "1T"}, {"size": str(limit), "dm.basesize": "1T"}):
        create["HostConfig"]["StorageOpt"] = other
        with pytest.raises(Refused, match="HostConfig.StorageOpt"):
            checked.plan(Call("POST", CREATE, json.dumps(create).encode()))
    info = {"Name": f"/{PROJECT}-lab-bob", "Config": {"Labels": {"gpuhub.project": PROJECT,
                                                                  "gpuhub.user": "bob"}},
            "HostConfig": {**built["HostConfig"], "StorageOpt": None}}
    assert "storage options None" in checked.hardening_problems(info)
    # Without a limit the broker adds none (and refuses one the hub makes up).
    create["HostConfig"].pop("StorageOpt")
    assert "StorageOpt" not in json.loads(
        policy().plan(Call("POST", CREATE, json.dumps(create).encode())).body)["HostConfig"]


@pytest.mark.parametrize("setting, made, expected, said", [
    ("auto", Result(), {"GPUHUB_LAB_DISK_LIMIT": str(20 * 1024 ** 3)}, "may write up to 20G"),
    ("8G", Result(), {"GPUHUB_LAB_DISK_LIMIT": str(8 * 1024 ** 3)}, "may write up to 8G"),
    ("auto", Result(stderr=OVERLAY_REFUSAL, exited=125), {}, "cannot bound a lab's writable"),
    ("none", None, {}, ""),
])
def test_up_bounds_the_writable_layer_where_dockers_storage_can(env_file, capsys, setting,
                                                                 made, expected, said):
    env_file(LAB_DISK_LIMIT=setting)
    size = 8 * 1024 ** 3 if setting == "8G" else 20 * 1024 ** 3
    probe = ("docker run --rm --network none --storage-opt "
             f"size={size} --entrypoint true gpuhub-lab:latest")
    c = docker_context(*([(probe, made)] if made is not None else []), running=False)
    assert composestack.lab_disk_env(c, load()) == expected
    assert said in capsys.readouterr().out
    if setting == "none":
        assert commands(c) == []
    else:  # one container of the lab image, with the limit, that runs `true`
        assert commands(c) == [probe]


def test_up_refuses_a_writable_layer_limit_dockers_storage_cannot_keep(env_file):
    env_file(LAB_DISK_LIMIT="8G")
    probe = ("docker run --rm --network none --storage-opt "
             f"size={8 * 1024 ** 3} --entrypoint true gpuhub-lab:latest")
    c = docker_context((probe, Result(stderr=OVERLAY_REFUSAL, exited=125)), running=False)
    with pytest.raises(Exit, match="LAB_DISK_LIMIT=8G cannot be kept.*only for overlay over xfs"):
        composestack.lab_disk_env(c, load())


def test_the_hub_asks_for_the_limit_invoke_up_found():
    from traitlets.config import Config

    from gpuhub.hub.hubconfig import update_lab_limits, update_spawner

    c = Config()
    settings = validate({})
    update_spawner(c, settings)
    update_lab_limits(c, settings, 16 * 1024 ** 3, disk_limit=20 * 1024 ** 3)
    assert c.DockerSpawner.extra_host_config["storage_opt"] == {"size": str(20 * 1024 ** 3)}
    update_lab_limits(c, settings, 16 * 1024 ** 3)
    assert "storage_opt" not in c.DockerSpawner.extra_host_config
    assert lablimits.lab_disk_limit({"GPUHUB_LAB_DISK_LIMIT": "123"}) == 123
    assert lablimits.lab_disk_limit({}) == 0


def test_the_admins_page_lists_the_fullest_work_folders_first():
    from gpuhub.hub.workpage import rows

    report = workuse.parse(REPORT.encode())
    report["carol"] = workuse.FolderUse(0, 0)  # a legacy folder without a limit
    listed = rows(report)
    assert [(r["user"], r["percent"], r["full"]) for r in listed] == [
        ("alice", 100, True), ("bob", 8, False), ("carol", None, False)]
    assert listed[1]["text"] == "5.0 MiB of 64.0 MiB"
