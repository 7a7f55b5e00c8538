"""Labs apart: the labs subnet `invoke up` picks or reads back, and a network made before."""

import json

import pytest
from invoke import Result
from invoke.exceptions import Exit

from gpuhub.tasks import labsnetwork
from gpuhub.tasks.labsnetwork import LabsAddresses
from gpuhub.tasks.project import load
from support.mock_docker import PROBE_SUBNET, commands, docker_context, labs_network_setup


def network(icc: str | None, subnet: str | None = "10.123.0.0/20") -> Result:
    options = {"com.docker.network.bridge.name": "gpuhub-labs"}
    if icc is not None:
        options[labsnetwork.ICC_OPTION] = icc
    config = [{"Subnet": subnet, "Gateway": "10.123.0.1"}] if subnet else []
    return Result(json.dumps([{"Name": "gpuhub-labs", "Options": options,
                               "IPAM": {"Driver": "default", "Config": config}}]))


def test_the_hub_and_the_proxy_are_outside_the_range_labs_get():
    apart = LabsAddresses.of("10.123.0.0/20")
    assert (apart.hub, apart.proxy, apart.lab_range) == ("10.123.0.2", "10.123.0.3",
                                                          "10.123.8.0/21")
    with pytest.raises(ValueError, match="too small"):
        LabsAddresses.of("10.123.0.0/27")


def test_a_new_labs_network_gets_the_subnet_dockers_allocator_picks(env_file):
    env_file()
    c = docker_context(running=False)
    apart = labsnetwork.plan(c, load())
    assert str(apart.subnet) == PROBE_SUBNET
    assert commands(c) == labs_network_setup()  # the probe network is removed again


def test_a_network_made_apart_is_read_back(env_file):
    env_file()
    c = docker_context(("docker network inspect gpuhub-labs", network("false")), running=False)
    assert labsnetwork.plan(c, load()) == LabsAddresses.of("10.123.0.0/20")
    assert commands(c) == ["docker network inspect gpuhub-labs"]


@pytest.mark.parametrize("answer", [network(None), network("true"), network("false", None)])
def test_a_network_made_before_is_left_as_it_is(env_file, answer):
    env_file()
    c = docker_context(("docker network inspect gpuhub-labs", answer), running=False)
    assert labsnetwork.plan(c, load()) is None
    assert commands(c) == ["docker network inspect gpuhub-labs"]


def test_up_on_a_network_made_before_warns_and_keeps_it(env_file, free_port, capsys,
                                                        no_gpu_detection):
    from gpuhub.tasks import stack

    env_file(HUB_PORT=free_port)
    c = docker_context(("docker network inspect gpuhub-labs", network(None)), running=False)
    stack.up(c, build=False)
    (up,) = [cmd for cmd in commands(c) if " up -d " in cmd]
    assert labsnetwork.APART_FILE not in up
    out = capsys.readouterr().out
    assert "warning: labs can reach each other: the labs network gpuhub-labs was made" in out
    assert "run `invoke down`, then `invoke up`" in out


def test_without_the_lab_firewall_labs_are_not_kept_apart(env_file, free_port,
                                                          no_gpu_detection):
    from gpuhub.tasks import stack

    env_file(HUB_PORT=free_port, LAB_FIREWALL="false")
    c = docker_context(running=False)
    stack.up(c, build=False)
    assert not [cmd for cmd in commands(c) if "labs-probe" in cmd or labsnetwork.APART_FILE in cmd]


def test_no_free_subnet_is_one_line(env_file):
    env_file()
    c = docker_context((f"docker network create --label {labsnetwork.PROBE_LABEL}=1 "
                        "gpuhub-labs-probe", Result(stderr="Error response from daemon: could "
                                                    "not find an available, non-overlapping "
                                                    "IPv4 address pool", exited=1)),
                       running=False)
    with pytest.raises(Exit, match="Docker has no free subnet for the labs network"):
        labsnetwork.plan(c, load())
