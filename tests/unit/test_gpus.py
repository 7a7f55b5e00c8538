"""The GPU inventory: nvidia-smi parsing, the GPU_DEVICES selection, the JSON hand-over."""

import pytest

from gpuhub.core.gpus import Gpu, from_json, parse_nvidia_smi, select, summary, to_json

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
    (f"0,{MIG}", [DETECTED[0], Gpu("1", MIG)]),
])
def test_select_applies_gpu_devices_to_what_was_detected(setting, expected):
    assert select(DETECTED, setting) == expected


def test_select_auto_without_gpus_is_cpu_only():
    assert select([], "auto") == []


def test_select_trusts_explicit_devices_when_nothing_was_detected():
    assert select([], f"2,{UUID1}") == [Gpu("2"), Gpu("1", UUID1)]


@pytest.mark.parametrize("dev", ["2", "GPU-00000000-dead-beef-0000-000000000000"])
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
