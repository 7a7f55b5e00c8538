"""The Docker broker against a recording fake daemon: what reaches Docker, not what it answered.

Each hostile request in the table is one way through a filter that pattern-matches bytes;
each must be refused, and the fake daemon must have been asked nothing that changes
anything. gpuhub's own calls go through, rebuilt.
"""

from __future__ import annotations

import json

import pytest

from gpuhub.broker.policy import REFUSED
from gpuhub.broker.server import policy_from_env
from gpuhub.core.gpus import Gpu, to_json
from harness.fake_docker import GPUS, LAB_IMAGE, PROJECT, SHARED, BrokerHarness
from harness.hostile_docker import Variants, gpuhub_create, hostile_requests

LAB = f"{PROJECT}-lab-bob"
CREATE = f"/v1.41/containers/create?name={LAB}"
GPUHUB_CREATE = gpuhub_create(PROJECT, LAB_IMAGE, GPUS[0], SHARED)
HOSTILE = hostile_requests(PROJECT, LAB_IMAGE, GPUS[0], SHARED, hub="id-hub")


VARIANT = Variants(GPUHUB_CREATE)
body, host, raw_host = VARIANT.body, VARIANT.host, VARIANT.raw_host


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with BrokerHarness(tmp_path_factory.mktemp("broker")) as harness:
        yield harness


def test_the_table_has_every_class(broker):
    assert len(HOSTILE) >= 50
    assert len({case for case, *_ in HOSTILE}) == len(HOSTILE), "case names are unique"


@pytest.mark.parametrize(("case", "method", "target", "payload"), HOSTILE,
                         ids=[case for case, *_ in HOSTILE])
def test_hostile_requests_change_nothing(broker, case, method, target, payload):
    before = len(broker.docker.calls)
    status, answer = broker.request(method, target, payload)
    reached = broker.docker.calls[before:]
    assert not [c for c in reached if c[0] not in ("GET", "HEAD")], \
        f"{case}: reached Docker: {reached}"
    # Only an inspect of the target may have reached Docker (to see it is not a lab).
    assert all("/json" in c[1] and "/containers/" in c[1] for c in reached), reached
    assert status in (403, 404, 413), (status, answer)
    message = answer.get("message", "") if isinstance(answer, dict) else answer
    assert REFUSED in message or status == 404, (status, answer)


def test_refusals_name_the_field_and_rule(broker):
    status, answer = broker.request("POST", CREATE, host(Privileged=True))
    assert (status, answer["message"]) == (
        403, f"{REFUSED}: HostConfig.Privileged: not on the allow-list")
    status, answer = broker.request("POST", CREATE, raw_host('"networkmode": "host"'))
    assert "NetworkMode: duplicate key (also 'networkmode'; Docker ignores case)" in answer["message"]


def test_gpuhubs_create_is_rebuilt_with_the_hardening(broker):
    before = len(broker.docker.calls)
    status, answer = broker.request("POST", CREATE, GPUHUB_CREATE)
    assert (status, answer) == (201, {"Id": "id-new", "Warnings": []})
    [(method, path, sent)] = broker.docker.calls[before:]
    assert (method, path) == ("POST", CREATE)
    sent = json.loads(sent)
    assert sent["HostConfig"] == {
        "NetworkMode": f"{PROJECT}-labs", "Binds": GPUHUB_CREATE["HostConfig"]["Binds"],
        "CapDrop": ["ALL"], "CapAdd": None, "SecurityOpt": ["no-new-privileges"],
        "Privileged": False, "PidsLimit": 1024, "RestartPolicy": {"Name": "no"},
        "LogConfig": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
        "AutoRemove": True, "Memory": 1 << 30, "CpuPeriod": 100000, "CpuQuota": 200000,
        "DeviceRequests": [{"Driver": "nvidia", "Count": 0, "DeviceIDs": [GPUS[0]],
                            "Capabilities": [["gpu"]], "Options": {}}]}
    assert sent["Labels"] == GPUHUB_CREATE["Labels"]
    assert sent["Env"] == GPUHUB_CREATE["Env"]
    assert sent["Image"] == LAB_IMAGE and sent["Cmd"] == ["gpuhub-singleuser"]


def test_a_lab_gets_the_capped_log_also_when_the_hub_asks_for_none(broker):
    uncapped = body()
    del uncapped["HostConfig"]["LogConfig"]
    before = len(broker.docker.calls)
    assert broker.request("POST", CREATE, uncapped)[0] == 201
    sent = json.loads(broker.docker.calls[before][2])
    assert sent["HostConfig"]["LogConfig"] == {
        "Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}


def test_a_lab_without_gpus_gets_none_whatever_its_image_says(broker):
    cpu = body(Env=["A=1"], Labels={**GPUHUB_CREATE["Labels"], "gpuhub.gpus": ""})
    del cpu["HostConfig"]["DeviceRequests"]
    before = len(broker.docker.calls)
    assert broker.request("POST", CREATE, cpu)[0] == 201
    sent = json.loads(broker.docker.calls[before][2])
    assert sent["Env"] == ["A=1", "NVIDIA_VISIBLE_DEVICES=void",
                           "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]
    assert "DeviceRequests" not in sent["HostConfig"]


def test_strings_that_look_like_json_stay_strings(broker):
    tricky = body(Cmd=["gpuhub-singleuser", '", "HostConfig": {"Privileged": true}}'])
    before = len(broker.docker.calls)
    assert broker.request("POST", CREATE, tricky)[0] == 201
    sent = json.loads(broker.docker.calls[before][2])
    assert sent["HostConfig"]["Privileged"] is False
    assert sent["Cmd"][1] == '", "HostConfig": {"Privileged": true}}'


@pytest.mark.parametrize(("method", "target", "reaches"), [
    ("GET", "/_ping", "/_ping"),
    ("GET", "/version", "/version"),
    ("GET", "/v1.41/containers/json?limit=-1&all=0&size=0&trunc_cmd=0&filters=%7B%22label"
            "%22%3A+%5B%22gpuhub.project%3Dgpuhub%22%5D%7D",
     "/v1.41/containers/json?limit=-1&all=0&size=0&trunc_cmd=0&filters=%7B%22label"
     "%22%3A+%5B%22gpuhub.project%3Dgpuhub%22%5D%7D"),
    ("GET", f"/v1.41/containers/{LAB}/json", f"/containers/{LAB}/json"),
    ("POST", f"/v1.41/containers/{LAB}/start", f"/v1.41/containers/id-{LAB}/start"),
    ("POST", f"/v1.41/containers/{LAB}/stop?t=10", f"/v1.41/containers/id-{LAB}/stop?t=10"),
    ("DELETE", f"/v1.41/containers/id-{LAB}?v=True&link=False&force=False",
     f"/v1.41/containers/id-{LAB}?v=1&link=0&force=0"),
    ("GET", f"/v1.41/images/{LAB_IMAGE}/json", f"/v1.41/images/{LAB_IMAGE}/json"),
    ("GET", "/v1.41/images/quay.io/x/other:1/json", "/v1.41/images/quay.io/x/other:1/json"),
    ("GET", f"/v1.41/volumes/{PROJECT}-home-bob", f"/v1.41/volumes/{PROJECT}-home-bob"),
    ("DELETE", f"/v1.41/volumes/{PROJECT}-home-bob", f"/v1.41/volumes/{PROJECT}-home-bob"),
])
def test_the_calls_gpuhub_makes_go_through(broker, method, target, reaches):
    before = len(broker.docker.calls)
    status, answer = broker.request(method, target)
    assert status < 300, answer
    assert broker.docker.calls[-1][:2] == (method, reaches)
    assert len(broker.docker.calls) - before in (1, 2)  # an inspect first, for lab calls


def test_the_list_shows_only_this_projects_containers(broker):
    status, listed = broker.request("GET", "/v1.41/containers/json")
    assert status == 200
    assert sorted(c["Id"] for c in listed) == sorted(
        ["id-gpuhub-lab-bob", "id-gpuhub-lab-evil", "id-hub", "id-lab-firewall"])


def test_docker_not_answering_is_an_error_not_a_pass(tmp_path):
    with BrokerHarness(tmp_path) as harness:
        harness.socket = str(tmp_path / "nothing-here.sock")
        harness_broker_socket = tmp_path / "docker.sock"
        harness_broker_socket.unlink()  # the fake daemon's socket is gone
        status, answer = harness.request("GET", "/_ping")
    assert status == 502 and "Docker did not answer" in answer["message"], answer


def test_a_bug_in_the_checks_refuses(broker, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("bug")
    monkeypatch.setattr(broker.policy.__class__, "rebuild_create", broken)
    before = len(broker.docker.calls)
    status, answer = broker.request("POST", CREATE, GPUHUB_CREATE)
    assert status == 403 and "internal error" in answer["message"]
    assert broker.docker.calls[before:] == []


def test_labs_go_under_the_labs_parent_cgroup_whatever_the_hub_asks(tmp_path):
    """LABS_MEM_LIMIT: every lab is made in the labs' parent cgroup (the hub may name it,
    or not); any other parent is refused."""
    import dataclasses

    from harness.fake_docker import policy

    parent = f"/gpuhub-{PROJECT}-labs"
    with BrokerHarness(tmp_path, dataclasses.replace(policy(), labs_cgroup_parent=parent)) as b:
        for asked in (body(), host(CgroupParent=parent)):
            before = len(b.docker.calls)
            assert b.request("POST", CREATE, asked)[0] == 201
            assert json.loads(b.docker.calls[before][2])["HostConfig"]["CgroupParent"] == parent
        for other in ("/", "/docker", f"{parent}/..", "system.slice"):
            status, answer = b.request("POST", CREATE, host(CgroupParent=other))
            assert status == 403 and "HostConfig.CgroupParent" in answer["message"], answer


def test_the_broker_keeps_the_gpu_inventory_it_was_last_given(tmp_path):
    """Compose run by hand passes no inventory: the broker allows the GPUs `invoke up` gave
    it last, as the hub does, instead of refusing every GPU lab."""
    data = tmp_path / "broker-data"
    data.mkdir()
    given = {"GPUHUB_GPU_INVENTORY": to_json([Gpu("0", "GPU-aaa"), Gpu("1", "GPU-bbb")])}
    assert policy_from_env(given, tmp_path / "none.yaml", data)[0].gpu_ids == {"GPU-aaa", "GPU-bbb"}
    assert policy_from_env({}, tmp_path / "none.yaml", data)[0].gpu_ids == {"GPU-aaa", "GPU-bbb"}
    # `invoke up` on a host whose GPUs are gone gives "[]": none is allowed any more.
    assert policy_from_env({"GPUHUB_GPU_INVENTORY": "[]"}, tmp_path / "none.yaml", data)[0].gpu_ids == set()
    assert policy_from_env({}, tmp_path / "none.yaml", data)[0].gpu_ids == set()
    # Without its folder (the image's build check): only what it was given.
    assert policy_from_env({}, tmp_path / "none.yaml")[0].gpu_ids == set()
