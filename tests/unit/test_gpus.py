"""The GPU inventory: nvidia-smi parsing, the GPU_DEVICES selection, the JSON hand-over."""

import pytest

from gpuhub.core.gpus import (
    Gpu,
    from_json,
    mig_memory_mib,
    parse_list,
    parse_nvidia_smi,
    remembered,
    select,
    summary,
    to_json,
    with_mig,
)

UUID0 = "GPU-4f6f9d2a-1c3e-4b7a-9e21-0a1b2c3d4e50"
UUID1 = "GPU-8a2b7c41-5d9e-4f03-b6a7-1b2c3d4e5f61"
MIG = "MIG-c3d94e12-7f8a-4b5c-8d1e-2c3d4e5f6a72"

# What `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits`
# prints: ", " between fields, a trailing newline.
TWO_T4 = f"0, {UUID0}, Tesla T4, 15360\n1, {UUID1}, Tesla T4, 15360\n"

DETECTED = [Gpu("0", UUID0, "Tesla T4", 15360), Gpu("1", UUID1, "Tesla T4", 15360)]


def test_parse_nvidia_smi_reads_each_gpu():
    assert parse_nvidia_smi(TWO_T4) == DETECTED


def test_parse_nvidia_smi_keeps_a_name_with_commas():
    out = f"0, {UUID0}, NVIDIA RTX 6000, Ada Generation, 49140\n"
    assert parse_nvidia_smi(out) == [Gpu("0", UUID0, "NVIDIA RTX 6000, Ada Generation", 49140)]


def test_parse_nvidia_smi_unknown_memory_is_zero():
    # A MIG-enabled or unified-memory GPU can report [N/A].
    out = f"\n0, {UUID0}, NVIDIA GH200 480GB, [N/A]\n\n"
    assert parse_nvidia_smi(out) == [Gpu("0", UUID0, "NVIDIA GH200 480GB", 0)]


def test_parse_nvidia_smi_of_nothing_is_no_gpus():
    assert parse_nvidia_smi("") == []


def test_parse_nvidia_smi_rejects_a_line_it_does_not_understand():
    message = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    with pytest.raises(ValueError) as info:
        parse_nvidia_smi(message)
    assert str(info.value) == f"unexpected nvidia-smi line {message!r}"


def test_device_id_prefers_the_uuid():
    assert Gpu("0", UUID0).device_id == UUID0
    assert Gpu("3").device_id == "3"


@pytest.mark.parametrize(("setting", "expected"), [
    ("auto", DETECTED),
    ("none", []),
    ("1", [DETECTED[1]]),
    ("1,0", [DETECTED[1], DETECTED[0]]),
    (UUID1, [DETECTED[1]]),
])
def test_select_applies_gpu_devices_to_what_was_detected(setting, expected):
    assert select(DETECTED, setting) == expected


def test_select_auto_without_gpus_is_cpu_only():
    assert select([], "auto") == []


def test_select_trusts_explicit_devices_when_nothing_was_detected():
    assert select([], f"2,{UUID1}") == [Gpu("2"), Gpu("1", UUID1)]


# A MIG UUID too: nvidia-smi -L lists every instance (it was once taken as given, unchecked).
@pytest.mark.parametrize("dev", ["2", "GPU-00000000-dead-beef-0000-000000000000", MIG, "0:1"])
def test_select_unknown_device_says_what_exists_and_the_fix(dev):
    with pytest.raises(ValueError) as info:
        select(DETECTED, f"0,{dev}")
    assert str(info.value) == (
        f"GPU_DEVICES names {dev!r}, but nvidia-smi lists only GPUs 0, 1; fix GPU_DEVICES in .env"
    )


A100 = "NVIDIA A100-SXM4-40GB"


@pytest.mark.parametrize("gpus, expected", [
    ([Gpu(str(i), name="Tesla T4") for i in range(4)], "4 GPUs (4× Tesla T4)"),
    # Models in the order they first appear, each counted over the whole inventory.
    ([Gpu("0", name="Tesla T4"), Gpu("1", name=A100), Gpu("2", name="Tesla T4")],
     f"3 GPUs (2× Tesla T4, 1× {A100})"),
    ([Gpu("0", UUID0, "Tesla T4", 15360)], "1 GPU (1× Tesla T4)"),
    ([], "no GPUs (CPU-only)"),
], ids=["identical", "mixed", "one", "none"])
def test_summary_counts_the_gpus_by_model(gpus, expected):
    assert summary(gpus) == expected


def test_json_round_trip():
    gpus = [*DETECTED, Gpu("2", MIG, "NVIDIA A100-SXM4-40GB MIG 1g.5gb", 4864), Gpu("7")]
    assert from_json(to_json(gpus)) == gpus


def test_empty_inventory_is_no_gpus():
    assert from_json("") == [] == from_json("  ")
    assert from_json(to_json([])) == []


def test_from_json_ignores_fields_it_does_not_know():
    assert from_json('[{"index": "0", "uuid": "GPU-1", "pci": "00:1e.0"}]') == [Gpu("0", "GPU-1")]


@pytest.mark.parametrize("text", ['[{"index": "0"', '{"index": "0"}', "5", "null", '[{"uuid": "GPU-1"}]'])
def test_broken_inventory_is_a_clear_error(text):
    with pytest.raises(ValueError) as info:
        from_json(text)
    message = str(info.value)
    assert message.startswith("GPUHUB_GPU_INVENTORY is not a valid inventory (")
    assert message.endswith(f"): {text!r}")


# --- MIG: nvidia-smi -L, as R470+ drivers print it -----------------------------------------

A100_0 = "GPU-5b0c7a1e-3f2d-4c8b-9a61-7e2f4d3c1b90"
A100_1 = "GPU-6c1d8b2f-4e3a-4d9c-ab72-8f3e5d4c2ca1"
SLICES = ["MIG-1d4e8f20-6a3b-5c7d-8e9f-0a1b2c3d4e51", "MIG-3f60a142-8c5d-5e9f-a0b1-2c3d4e5f6a73"]
# GPU 0 partitioned next to a whole GPU 1 (the shape of influxdata/telegraf#5812).
LISTED = (f"GPU 0: {A100} (UUID: {A100_0})\n"
          f"  MIG 3g.20gb     Device  0: (UUID: {SLICES[0]})\n"
          f"  MIG 1g.5gb      Device  1: (UUID: {SLICES[1]})\n"
          f"GPU 1: {A100} (UUID: {A100_1})\n")
QUERIED = [Gpu("0", A100_0, A100, 40960), Gpu("1", A100_1, A100, 40960)]
INSTANCES = [Gpu("0:0", SLICES[0], f"{A100} MIG 3g.20gb", 20480, A100_0, "3g.20gb"),
             Gpu("0:1", SLICES[1], f"{A100} MIG 1g.5gb", 5120, A100_0, "1g.5gb")]


def test_a_gpu_in_mig_mode_is_replaced_by_its_instances():
    assert with_mig(QUERIED, LISTED) == [*INSTANCES, QUERIED[1]]


def test_without_mig_lines_the_inventory_is_unchanged():
    assert with_mig(DETECTED, f"GPU 0: Tesla T4 (UUID: {UUID0})\n") == DETECTED
    assert with_mig(DETECTED, "") == DETECTED


def test_the_list_of_a_real_driver_is_read_with_its_padding():
    # DataDog/datadog-agent#33120, driver 535.216.01 (first two of seven instances).
    listed = ("GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-7fdaf0a5-179b-f636-d15d-daf243e3ff16)\n"
              "  MIG 1g.10gb     Device  0: (UUID: MIG-feb88891-0321-5fef-9c87-d4af3b54259e)\n"
              "  MIG 1g.10gb     Device  1: (UUID: MIG-a25704ba-3a06-5299-a795-fd7cf4d13973)\n")
    found = parse_list(listed)["GPU-7fdaf0a5-179b-f636-d15d-daf243e3ff16"]
    assert [(g.index, g.uuid, g.mig_profile, g.memory_mib) for g in found] == [
        ("0:0", "MIG-feb88891-0321-5fef-9c87-d4af3b54259e", "1g.10gb", 10240),
        ("0:1", "MIG-a25704ba-3a06-5299-a795-fd7cf4d13973", "1g.10gb", 10240)]


def test_a_lost_gpus_line_ends_its_instances():
    listed = ("Unable to determine the device handle for GPU0000:01:00.0: Unknown Error\n"
              f"  MIG 1g.5gb      Device  0: (UUID: {SLICES[1]})\n")
    assert parse_list(listed) == {}


@pytest.mark.parametrize("profile, mib", [("1g.5gb", 5120), ("3g.40gb", 40960),
                                          ("1g.10gb+me", 10240), ("1c.3g.20gb", 20480),
                                          ("7g.80gb", 81920), ("gpu", 0), ("1g.5", 0)])
def test_an_instances_memory_is_its_profiles_nominal_size(profile, mib):
    assert mig_memory_mib(profile) == mib


@pytest.mark.parametrize("setting, expected", [
    ("auto", [*INSTANCES, QUERIED[1]]),
    ("0:1", [INSTANCES[1]]),
    (f"{SLICES[0]},1", [INSTANCES[0], QUERIED[1]]),
])
def test_gpu_devices_names_mig_instances_by_index_or_uuid(setting, expected):
    assert select(with_mig(QUERIED, LISTED), setting) == expected


@pytest.mark.parametrize("dev", ["0", A100_0])
def test_gpu_devices_naming_a_partitioned_gpu_says_to_name_its_instances(dev):
    with pytest.raises(ValueError) as info:
        select(with_mig(QUERIED, LISTED), dev)
    assert str(info.value) == (
        f"GPU_DEVICES names GPU {dev!r}, which is in MIG mode: a lab is given one of its MIG "
        "instances, not the GPU; name those (0:0, 0:1) or their MIG-… UUIDs in GPU_DEVICES "
        "in .env")


def test_mig_instances_cross_to_the_hub_with_their_parent_and_profile():
    assert from_json(to_json(INSTANCES)) == INSTANCES


def test_summary_counts_gpus_and_mig_instances_apart():
    assert summary([*INSTANCES, QUERIED[1]]) == (
        f"1 GPU and 2 MIG instances (1× MIG 3g.20gb, 1× MIG 1g.5gb, 1× {A100})")
    assert summary(INSTANCES[:1]) == "1 MIG instance (1× MIG 3g.20gb)"


def test_the_inventory_given_is_kept_and_used_when_none_is_given(tmp_path):
    saved = tmp_path / "data" / "gpu-inventory.json"
    assert remembered("", saved) == []  # nothing given, nothing kept: no GPUs
    assert remembered(to_json(DETECTED), saved) == DETECTED
    assert remembered("", saved) == remembered("  ", saved) == DETECTED  # compose by hand
    assert remembered("[]", saved) == [] and remembered("", saved) == []  # GPUs taken away


def test_a_broken_inventory_is_refused_and_the_kept_one_stays(tmp_path):
    saved = tmp_path / "gpu-inventory.json"
    remembered(to_json(DETECTED), saved)
    with pytest.raises(ValueError, match="not a valid inventory"):
        remembered("GPU-aaa", saved)
    assert remembered("", saved) == DETECTED
    saved.write_text("{broken")
    with pytest.raises(ValueError, match="not a valid inventory"):
        remembered("", saved)
