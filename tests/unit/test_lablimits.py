"""Lab limits: what auto comes to on hosts of each size, the one memory parser, the host's size."""

import pytest

from gpuhub.core import lablimits

GIB = 1024 ** 3


@pytest.mark.parametrize(("host_gib", "limit"), [
    (2, "1024M"),        # a small VM: the reserve is at most half
    (4, "2048M"),        # 2 GiB kept back
    (16, "14336M"),      # 2 GiB kept back (10 % would be 1.6 GiB)
    (64, "58982M"),      # 10 % kept back: 6.4 GiB
    (512, "471859M"),    # 10 %: 51.2 GiB for the system, page cache, the hub and Docker
])
def test_auto_memory_keeps_a_reserve_no_single_lab_can_take(host_gib, limit):
    assert lablimits.auto_memory(host_gib * GIB) == limit
    assert lablimits.memory_bytes(limit) < host_gib * GIB


def test_lab_memory_auto_none_or_a_size():
    assert lablimits.lab_memory("auto", 16 * GIB) == "14336M"
    assert lablimits.lab_memory("none", 16 * GIB) is None
    assert lablimits.lab_memory("8G", 16 * GIB) == "8G"  # may exceed auto: the admin said so
    with pytest.raises(ValueError, match="LAB_MEM_LIMIT=auto, but .* unknown"):
        lablimits.lab_memory("auto", 0)


def test_lab_cpus_auto_and_none_are_no_quota():
    assert lablimits.lab_cpus("auto") is None
    assert lablimits.lab_cpus("none") is None
    assert lablimits.lab_cpus(2.5) == 2.5


@pytest.mark.parametrize(("raw", "parsed"), [("16g", "16G"), (" 1.5G ", "1.5G"), ("6M", "6M"),
                                             ("1t", "1T"), ("8192K", "8192K")])
def test_parse_memory_normalises(raw, parsed):
    assert lablimits.parse_memory(raw) == parsed


@pytest.mark.parametrize(("raw", "says"), [
    ("16", "needs a unit: must be a size such as 512M or 16G"),
    (1073741824, "needs a unit"),
    ("8GB", "must be a size such as 512M"),
    ("8 G", "must be a size such as 512M"),
    ("-1G", "must be a size such as 512M"),
    ("", "must be a size such as 512M"),
    ("5M", "at least 6M"),
    ("0G", "at least 6M"),
])
def test_parse_memory_refuses_with_the_fix(raw, says):
    with pytest.raises(ValueError, match=says):
        lablimits.parse_memory(raw)


def test_parse_memory_names_the_callers_other_values():
    with pytest.raises(ValueError, match="must be auto, none or a size such as 512M"):
        lablimits.parse_memory("lots", "auto, none")


def test_memory_bytes_counts_as_dockerspawner_does():
    from jupyterhub.traitlets import ByteSpecification

    for size in ("1.5G", "512M", "6M", "1T"):
        assert lablimits.memory_bytes(size) == ByteSpecification().validate(None, size)


MEMINFO = "MemTotal:       16318480 kB\nMemFree:         8000000 kB\n"


def test_host_memory_is_invoke_ups_word_else_this_kernels(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert lablimits.host_memory({"GPUHUB_LAB_HOST_MEMORY": str(64 * GIB)}, meminfo) == 64 * GIB
    for given in ({}, {"GPUHUB_LAB_HOST_MEMORY": ""}, {"GPUHUB_LAB_HOST_MEMORY": "0"},
                  {"GPUHUB_LAB_HOST_MEMORY": "lots"}):
        assert lablimits.host_memory(given, meminfo) == 16318480 * 1024
    assert lablimits.host_memory({}, tmp_path / "missing") == 0
    assert lablimits.meminfo_total("MemFree: 1 kB\n") == 0
