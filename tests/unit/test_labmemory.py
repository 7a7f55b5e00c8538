"""lab-memory: the labs' parent cgroup and its limit, kept in place; healthy only then."""

import os
from pathlib import Path

import pytest
from invoke import Result
from invoke.exceptions import Exit

from gpuhub.labfirewall import labmemory
from gpuhub.labfirewall.labmemory import Parent, Services, parent_from_env, services_from_env
from gpuhub.tasks import composestack
from gpuhub.tasks.project import load
from support.mock_docker import CGROUP_INFO, OOM_PROBE, docker_context

PAGE = os.sysconf("SC_PAGE_SIZE")
LIMIT = 700 * 2**20  # whole pages
ENV = {"GPUHUB_LABS_CGROUP_PARENT": "/gpuhub-demo-labs", "GPUHUB_LABS_MEMORY": str(LIMIT),
       "GPUHUB_CGROUP_DRIVER": "cgroupfs", "GPUHUB_CGROUP_VERSION": "1"}


@pytest.mark.parametrize("driver, version, name, path, limit_file", [
    ("cgroupfs", "1", "/gpuhub-demo-labs", "R/memory/gpuhub-demo-labs", "memory.limit_in_bytes"),
    ("cgroupfs", "2", "/gpuhub-demo-labs", "R/gpuhub-demo-labs", "memory.max"),
    ("systemd", "2", "gpuhub-demo-labs.slice",
     "R/gpuhub.slice/gpuhub-demo.slice/gpuhub-demo-labs.slice", "memory.max"),
])
def test_where_the_parent_is_for_each_driver_and_cgroup_version(driver, version, name, path,
                                                                limit_file):
    parent = Parent(name, LIMIT, driver, version)
    assert parent.path("R") == path and parent.limit_file == limit_file


@pytest.mark.parametrize("change, words", [
    ({"GPUHUB_CGROUP_DRIVER": ""}, "not a cgroup setup gpuhub knows"),
    ({"GPUHUB_CGROUP_VERSION": "3"}, "not a cgroup setup gpuhub knows"),
    ({"GPUHUB_CGROUP_DRIVER": "systemd", "GPUHUB_LABS_CGROUP_PARENT": "x.slice"},
     "systemd cgroup driver on cgroup v1"),
    ({"GPUHUB_LABS_CGROUP_PARENT": "/"}, "not a cgroup parent gpuhub makes"),
    ({"GPUHUB_LABS_CGROUP_PARENT": "/gpuhub/../docker"}, "not a cgroup parent gpuhub makes"),
    ({"GPUHUB_LABS_CGROUP_PARENT": "gpuhub-demo-labs"}, "not a cgroup parent gpuhub makes"),
    ({"GPUHUB_LABS_MEMORY": ""}, "not a number of bytes"),
    ({"GPUHUB_LABS_MEMORY": "0"}, "not a number of bytes"),
])
def test_a_parent_compose_did_not_describe_is_refused(change, words):
    with pytest.raises(ValueError, match=words):
        parent_from_env({**ENV, **change})


def test_the_service_makes_the_parent_writes_the_limit_and_keeps_it(tmp_path, monkeypatch):
    parent = parent_from_env(ENV)
    status = tmp_path / "lab-memory.ok"
    limit_file = tmp_path / "memory" / "gpuhub-demo-labs" / "memory.limit_in_bytes"
    rounds = []

    def sleep(seconds):
        rounds.append((limit_file.read_text(), status.exists()))
        if len(rounds) == 1:
            limit_file.write_text("9223372036854771712")  # reset (a reboot, by hand)
        else:
            raise labmemory._Stop()

    monkeypatch.setattr(labmemory.time, "sleep", sleep)
    labmemory.run_forever(parent, root=str(tmp_path), status=str(status))
    # Written before any lab, healthy; put back after the reset, healthy again.
    assert rounds == [(str(LIMIT), True), (str(LIMIT), True)]
    assert not status.exists(), "stopped: no longer healthy"
    assert limit_file.read_text() == str(LIMIT), "the limit stays when the service stops"


def test_while_the_kernel_refuses_the_limit_no_lab_starts(tmp_path, monkeypatch, capsys):
    parent = parent_from_env(ENV)
    (tmp_path / "memory").write_text("not a folder")  # the parent cannot be made
    status = tmp_path / "lab-memory.ok"
    seen = []

    def sleep(seconds):
        seen.append(status.exists())
        raise labmemory._Stop()

    monkeypatch.setattr(labmemory.time, "sleep", sleep)
    labmemory.run_forever(parent, root=str(tmp_path), status=str(status))
    assert seen == [False]
    assert "error: cannot write memory.limit_in_bytes" in capsys.readouterr().out


@pytest.mark.parametrize("driver, version, name, path, weight_file, weight", [
    ("cgroupfs", "1", "/gpuhub-demo-services", "R/cpu/gpuhub-demo-services", "cpu.shares",
     16384),
    ("cgroupfs", "2", "/gpuhub-demo-services", "R/gpuhub-demo-services", "cpu.weight", 1600),
    ("systemd", "2", "gpuhub-demo-services.slice",
     "R/gpuhub.slice/gpuhub-demo.slice/gpuhub-demo-services.slice", "cpu.weight", 1600),
])
def test_where_the_services_parent_is_and_its_weight(driver, version, name, path, weight_file,
                                                     weight):
    services = Services(name, driver, version)
    assert (services.path("R"), services.weight_file, services.weight) == (path, weight_file,
                                                                             weight)


def test_the_services_parent_comes_from_compose_and_is_never_the_labs():
    parent = parent_from_env(ENV)
    assert services_from_env(ENV, parent) is None  # LABS_MEM_LIMIT=none by hand: Docker's
    named = {**ENV, "GPUHUB_SERVICES_CGROUP_PARENT": "/gpuhub-demo-services"}
    assert services_from_env(named, parent) == Services("/gpuhub-demo-services", "cgroupfs", "1")
    for wrong in ("/gpuhub-demo-labs", "/../docker", "gpuhub-demo-services.slice"):
        with pytest.raises(ValueError, match="GPUHUB_SERVICES_CGROUP_PARENT"):
            services_from_env({**ENV, "GPUHUB_SERVICES_CGROUP_PARENT": wrong}, parent)


def test_the_service_keeps_the_services_weight_and_stays_healthy_without_it(
        tmp_path, monkeypatch, capsys):
    parent = parent_from_env(ENV)
    services = Services("/gpuhub-demo-services", "cgroupfs", "1")
    status = tmp_path / "lab-memory.ok"
    shares = tmp_path / "cpu" / "gpuhub-demo-services" / "cpu.shares"
    rounds = []

    def sleep(seconds):
        rounds.append((shares.read_text() if shares.is_file() else None, status.exists()))
        if len(rounds) == 1:
            shares.write_text("1024")  # Docker made it anew, or someone reset it
        elif len(rounds) == 2:
            shares.unlink()
            shares.mkdir()  # the kernel refuses the weight now
        else:
            raise labmemory._Stop()

    monkeypatch.setattr(labmemory.time, "sleep", sleep)
    labmemory.run_forever(parent, root=str(tmp_path), status=str(status), services=services)
    # Made with its weight before any service needs it, put back; a weight the kernel
    # refuses is said once and leaves the labs' limit (the service's health) alone.
    assert rounds == [("16384", True), ("16384", True), (None, True)]
    out = capsys.readouterr().out
    assert out.count("the hub's services run with CPU weight 16384") == 1
    assert out.count("warning: cannot keep") == 1 and "may answer slowly" in out


def test_the_kernel_keeps_the_limit_in_whole_pages(tmp_path):
    parent = Parent("/p", LIMIT + 1, "cgroupfs", "2")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "memory.max").write_text(str(LIMIT))  # what the kernel reads back
    assert labmemory.in_place(parent, str(tmp_path)) is (PAGE > 1)


# --- what `invoke up` tells lab-memory, the hub and the broker ---------------------------

GIB = 2**30


@pytest.mark.parametrize("setting, answer, expected", [
    ("auto", "cgroupfs 1", {"GPUHUB_LABS_CGROUP_PARENT": "/gpuhub-gpuhub-labs",
                            "GPUHUB_SERVICES_CGROUP_PARENT": "/gpuhub-gpuhub-services",
                            "GPUHUB_LABS_MEMORY": str(14336 * 2**20),
                            "GPUHUB_CGROUP_DRIVER": "cgroupfs", "GPUHUB_CGROUP_VERSION": "1"}),
    ("48G", "systemd 2", {"GPUHUB_LABS_CGROUP_PARENT": "gpuhub-gpuhub-labs.slice",
                          "GPUHUB_SERVICES_CGROUP_PARENT": "gpuhub-gpuhub-services.slice",
                          "GPUHUB_LABS_MEMORY": str(48 * GIB),
                          "GPUHUB_CGROUP_DRIVER": "systemd", "GPUHUB_CGROUP_VERSION": "2"}),
    ("none", "cgroupfs 1", {}),
])
def test_up_names_the_parent_for_dockers_cgroup_driver(env_file, setting, answer, expected):
    env_file(LABS_MEM_LIMIT=setting)
    c = docker_context((CGROUP_INFO, Result(answer + "\n")), running=False)
    assert composestack.lab_memory_env(c, load(), 16 * GIB) == expected


@pytest.mark.parametrize("answer, memory, words", [
    ("systemd 1", 16 * GIB, "systemd cgroup driver on cgroup v1"),
    ("", 16 * GIB, "unknown cgroup driver"),
    ("cgroupfs 1", 0, "LABS_MEM_LIMIT=auto, but the Docker host's memory is unknown"),
])
def test_up_refuses_what_cannot_bound_the_labs_together(env_file, answer, memory, words):
    env_file()
    c = docker_context((CGROUP_INFO, Result(answer + "\n")), running=False)
    with pytest.raises(Exit, match=words):
        composestack.lab_memory_env(c, load(), memory)


# --- the hub's services and the OOM killer ------------------------------------------------

@pytest.mark.parametrize("answer, expected", [
    (Result("-500\n"), {"GPUHUB_SERVICES_OOM_SCORE_ADJ": "-500"}),
    # This machine's engine: runc cannot write a negative score (no CAP_SYS_RESOURCE).
    (Result(stderr="docker: Error response from daemon: failed to create shim task: OCI "
                   "runtime create failed: runc create failed: unable to start container "
                   "process: can't get final child's PID from pipe: EOF: unknown.", exited=127),
     {}),
    (Result("0\n"), {}),  # an engine that ignored the option
])
def test_the_hubs_services_get_a_negative_oom_score_where_the_engine_can_set_one(
        env_file, capsys, answer, expected):
    env_file()
    c = docker_context((OOM_PROBE, answer), running=False)
    assert composestack.services_oom_env(c, load()) == expected
    said = capsys.readouterr().out
    assert ("last choice" in said) == bool(expected), said
    assert ("cannot lower OOM scores" in said) != bool(expected), said
    assert ("labs stay under LABS_MEM_LIMIT" in said) != bool(expected), said


def test_without_a_limit_for_all_labs_the_oom_note_does_not_say_there_is_one(env_file, capsys):
    env_file(LABS_MEM_LIMIT="none")
    refused = Result(stderr="docker: Error response from daemon: failed to create shim task",
                     exited=127)
    assert composestack.services_oom_env(docker_context((OOM_PROBE, refused), running=False),
                                         load()) == {}
    said = capsys.readouterr().out
    assert "LABS_MEM_LIMIT=none" in said and "stay under" not in said, said


def test_the_hubs_services_take_their_oom_score_from_invoke_up():
    import yaml

    from gpuhub.core import names

    compose = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
    scored = {name for name, service in compose["services"].items()
              if service.get("oom_score_adj") == f"${{{names.SERVICES_OOM_SCORE_ENV}:-0}}"}
    assert scored == {"hub", "proxy", "docker-proxy", "lab-firewall", "lab-memory"}
