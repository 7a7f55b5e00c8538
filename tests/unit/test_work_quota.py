"""WORK_QUOTA and LAB_TMP_SIZE without Docker: the settings, the broker's plan, what btrfs
prints and how it is read, and what the hub shows. The live test is
tests/integration/test_work_quota.py (a real btrfs, a real stack)."""

from __future__ import annotations

import dataclasses
import json
import types

import pytest

from gpuhub.broker.policy import Call, Refused
from gpuhub.broker.workfolders import Use, WorkFolders, parse_qgroups
from gpuhub.core import lablimits, workuse
from gpuhub.core.settings import SettingsError, validate
from gpuhub.hub.workfolders import WorkFolderCollector, WorkUse, template_vars
from harness.fake_docker import GPUS, LAB_IMAGE, PROJECT, SHARED, policy
from harness.hostile_docker import gpuhub_create

CREATE = f"/v1.41/containers/create?name={PROJECT}-lab-bob"
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
