"""The NVML probe, snapshots, hardware resolution and `shardwise probe`, on authored NVML snapshots (tests/data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from fake_nvml import FakeNVML, fake, load
from omegaconf import OmegaConf

import planner.hardware.probe as probe_module
from planner.config.schema import HardwareConfig, HardwareKind, Interconnect
from planner.errors import ShardwiseError
from planner.hardware.devices import Hardware
from planner.hardware.host import HostInfo, cgroup_memory_limit_bytes, host_info, installed_kernels, meminfo_total_bytes
from planner.hardware.probe import load_snapshot, normalize_pci_bus_id, probe, save_snapshot
from planner.hardware.tiers import resolve_hardware
from planner.units import GIB, MIB

REPO = Path(__file__).resolve().parents[1]
SHARDWISE = Path(sys.executable).parent / "shardwise"  # the console script of the running environment
HOST = HostInfo(ram_bytes=256 * GIB, cpu_count=32)


def probed(name: str, **environ) -> Hardware:
    return probe(fake(name), environ=environ, host=HOST)


# --- probing recorded machines -----------------------------------------------------------------


def test_h100_sxm_8x_gives_eight_gpus_linked_pairwise_through_nvswitch():
    nvml = fake("h100_sxm_8x")
    hw = probe(nvml, environ={}, host=HOST)
    snapshot = load("h100_sxm_8x")
    assert [d.id for d in hw.devices] == list(range(8))
    assert [d.uuid for d in hw.devices] == [g["uuid"] for g in snapshot["gpus"]]
    first = hw.devices[0]
    assert first.name == "NVIDIA H100 80GB HBM3" and first.compute_capability == "9.0"
    assert first.total_bytes == 81559 * MIB
    assert first.reserved_bytes == 581 * MIB
    assert first.free_bytes == 81559 * MIB - 581 * MIB
    assert hw.interconnect == "nvlink"
    assert len(hw.nvlink_pairs) == 28 and (0, 7) in hw.nvlink_pairs
    assert (hw.driver_version, hw.cuda_driver_version) == ("550.90.07", "12.4")
    assert (hw.source, hw.host_ram_bytes, hw.cpu_count) == ("probe", 256 * GIB, 32)
    assert hw.notes == ()
    assert nvml.shutdowns == 1 and nvml.started == 0


def test_busy_gpu_budget_uses_nvml_free_memory_and_lists_other_processes():
    hw = probed("busy_a100_pcie_2x")
    recorded = load("busy_a100_pcie_2x")["gpus"][1]["memory"]
    busy = hw.devices[1]
    assert busy.pci_bus_id == "00000000:65:00.0"
    assert busy.free_bytes == recorded["free"] == 81920 * MIB - 512 * MIB - 43 * GIB
    assert busy.free_bytes != busy.total_bytes - sum(p["used_bytes"] for p in busy.processes)
    assert busy.processes == (
        {"pid": 31337, "used_bytes": 30 * GIB, "name": "python3"},
        {"pid": 4711, "used_bytes": 12 * GIB, "name": ""},  # name unreadable (NoPermission): best effort
    )
    assert hw.devices[0].processes == () and hw.devices[0].free_bytes == 81920 * MIB - 512 * MIB


def test_nvlink_bridge_between_two_gpus_is_found_by_remote_pci_bus_id():
    hw = probed("busy_a100_pcie_2x")
    assert hw.nvlink_pairs == ((0, 1),) and hw.interconnect == "nvlink"


def test_mig_slices_are_separate_small_devices_and_the_parent_is_not_usable_whole():
    hw = probed("a100_mig_2slices")
    parent = load("a100_mig_2slices")["gpus"][0]
    assert len(hw.devices) == 2
    assert all(d.mig and d.uuid.startswith("MIG-") for d in hw.devices)
    assert parent["uuid"] not in [d.uuid for d in hw.devices]
    assert [d.total_bytes for d in hw.devices] == [19968 * MIB, 19968 * MIB]
    assert [d.free_bytes for d in hw.devices] == [19968 * MIB - 13 * MIB, 19968 * MIB - 16 * GIB - 13 * MIB]
    assert all(d.compute_capability == "8.0" and d.pci_bus_id == "00000000:07:00.0" for d in hw.devices)
    assert hw.devices[1].processes == ({"pid": 2222, "used_bytes": 16 * GIB, "name": "vllm"},)
    assert hw.nvlink_pairs == () and hw.interconnect == "none"
    assert any("MIG slices are separate GPUs" in n for n in hw.notes)


def test_recorded_h200_probes_to_its_nvidia_smi_numbers():
    """Recorded on the project's device machine; nvidia-smi there said 143771 MiB total, driver 580.159.04."""
    hw = probed("h200_recorded")
    (gpu,) = hw.devices
    assert (gpu.name, gpu.compute_capability, gpu.total_bytes) == ("NVIDIA H200", "9.0", 143771 * MIB)
    assert gpu.free_bytes == gpu.total_bytes - gpu.reserved_bytes == 150109880320
    assert (hw.driver_version, hw.cuda_driver_version, hw.interconnect, hw.notes) == ("580.159.04", "13.0", "pcie", ())


def test_mig_slice_is_chosen_by_its_uuid_prefix():
    second = load("a100_mig_2slices")["gpus"][0]["mig"]["slices"][1]["uuid"]
    hw = probed("a100_mig_2slices", CUDA_VISIBLE_DEVICES=second[:12])
    assert [(d.id, d.uuid) for d in hw.devices] == [(0, second)]


def test_mig_mode_without_slices_leaves_no_gpu_and_says_why():
    snapshot = load("a100_mig_2slices")
    snapshot["gpus"][0]["mig"]["slices"] = []
    hw = probe(FakeNVML(snapshot), environ={}, host=HOST)
    assert hw.devices == ()
    assert any("MIG mode with no slices" in n for n in hw.notes)


def test_old_driver_falls_back_to_v1_memory_v2_process_list_and_pci_only_nvlink():
    hw = probed("old_driver_v100_2x")
    recorded = load("old_driver_v100_2x")["gpus"][0]["memory"]
    gpu0 = hw.devices[0]
    assert gpu0.free_bytes == recorded["free"] == 32768 * MIB - 2 * GIB - 300 * MIB
    assert gpu0.reserved_bytes == 0  # v1 has no reserved figure
    assert gpu0.processes == ({"pid": 900, "used_bytes": 2 * GIB, "name": "python"},)
    assert gpu0.compute_capability == "7.0" and not gpu0.supports_bf16
    assert hw.cuda_driver_version == "11.4"
    assert hw.nvlink_pairs == ((0, 1),)
    assert any("no v2 memory info" in n for n in hw.notes)


def test_devices_are_ordered_by_pci_bus_id_not_nvml_index():
    hw = probed("mixed_4090_3090")
    assert [(d.id, d.name, d.pci_bus_id) for d in hw.devices] == [
        (0, "NVIDIA GeForce RTX 3090", "00000000:01:00.0"),
        (1, "NVIDIA GeForce RTX 4090", "00000000:41:00.0"),
    ]
    assert [d.compute_capability for d in hw.devices] == ["8.6", "8.9"]
    assert [d.total_bytes for d in hw.devices] == [24576 * MIB, 24564 * MIB]
    assert hw.interconnect == "pcie" and hw.nvlink_pairs == ()


def test_cuda_visible_devices_filters_and_renumbers_in_the_listed_order():
    snapshot = load("h100_sxm_8x")
    hw = probed("h100_sxm_8x", CUDA_VISIBLE_DEVICES="3,1")
    assert [d.id for d in hw.devices] == [0, 1]
    assert [d.uuid for d in hw.devices] == [snapshot["gpus"][3]["uuid"], snapshot["gpus"][1]["uuid"]]
    assert hw.nvlink_pairs == ((0, 1),)


def test_cuda_visible_devices_by_uuid_prefix_and_bad_entry_ending_the_list():
    snapshot = load("h100_sxm_8x")
    six, two, four = (snapshot["gpus"][i]["uuid"] for i in (6, 2, 4))
    hw = probed("h100_sxm_8x", CUDA_VISIBLE_DEVICES=f"{six[:10]},{two},GPU-nonsense,{four}")
    assert [(d.id, d.uuid) for d in hw.devices] == [(0, six), (1, two)]
    assert any("'GPU-nonsense'" in n for n in hw.notes)


@pytest.mark.parametrize("value", ["", "0,0", "-1"])
def test_cuda_visible_devices_hiding_every_gpu_plans_for_cpu(value):
    hw = probed("h100_sxm_8x", CUDA_VISIBLE_DEVICES=value)
    assert hw.devices == () and hw.interconnect == "none"
    assert "no GPU is visible to CUDA: planning for CPU" in hw.notes
    assert hw.driver_version == "550.90.07"


def test_no_nvml_library_is_a_cpu_machine_with_a_one_line_note():
    nvml = fake("no_library")
    hw = probe(nvml, environ={}, host=HOST)
    assert hw.devices == () and hw.source == "probe" and hw.interconnect == "none"
    assert hw.notes == ("NVML not available (no NVIDIA driver): planning for CPU",)
    assert (hw.host_ram_bytes, hw.cpu_count) == (256 * GIB, 32)
    assert nvml.shutdowns == 0


def test_driver_not_loaded_is_a_cpu_machine_with_its_own_note():
    hw = probe(FakeNVML({"init_error": "DriverNotLoaded", "gpus": []}), environ={}, host=HOST)
    assert hw.devices == () and hw.notes == ("NVIDIA driver not loaded (NVML: Driver Not Loaded): planning for CPU",)


def test_zero_gpus_is_a_cpu_machine():
    snapshot = {"driver_version": "550.90.07", "cuda_driver_version": 12040, "gpus": []}
    hw = probe(FakeNVML(snapshot), environ={}, host=HOST)
    assert hw.devices == () and hw.notes == ("NVML found no GPU: planning for CPU",)


def test_a_gpu_that_does_not_answer_is_left_out_with_a_note():
    snapshot = load("h100_sxm_8x")
    snapshot["gpus"][2]["lost"] = True
    hw = probe(FakeNVML(snapshot), environ={}, host=HOST)
    assert len(hw.devices) == 7 and snapshot["gpus"][2]["uuid"] not in [d.uuid for d in hw.devices]
    assert any("NVML index 2 did not answer (GPU is lost)" in n for n in hw.notes)


def test_real_pynvml_on_this_machine_never_raises():
    hw = probe(environ={})
    assert hw.source == "probe" and hw.host_ram_bytes > 0 and hw.cpu_count >= 1
    if not hw.devices:
        assert len(hw.notes) >= 1 and "planning for CPU" in hw.notes[0]


def test_cuda_device_order_other_than_pci_is_reported():
    hw = probed("mixed_4090_3090", CUDA_DEVICE_ORDER="FASTEST_FIRST")
    assert any("CUDA_DEVICE_ORDER=FASTEST_FIRST" in n for n in hw.notes)


def test_pci_bus_ids_are_normalized_to_nvml_form():
    assert normalize_pci_bus_id("0000:1a:00.0") == "00000000:1A:00.0"
    assert normalize_pci_bus_id(b"00000000:1A:00.0") == "00000000:1A:00.0"


# --- host and installed kernels ---------------------------------------------------------------


def test_installed_kernels_reads_versions_without_importing(monkeypatch):
    found = installed_kernels(("pytest", "surely-not-installed-shardwise-x"))
    assert found == {"pytest": pytest.__version__}
    assert probed("mixed_4090_3090").installed == installed_kernels()


def test_meminfo_and_cgroup_limits_are_read(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       65842148 kB\nMemFree:         1000 kB\n")
    assert meminfo_total_bytes(meminfo) == 65842148 * 1024
    limit = tmp_path / "memory.max"
    for text, expected in [("max\n", None), ("17179869184\n", 16 * GIB), (str(1 << 63), None)]:
        limit.write_text(text)
        assert cgroup_memory_limit_bytes((limit,)) == expected
    assert cgroup_memory_limit_bytes((tmp_path / "absent",)) is None


def test_container_limit_below_host_ram_is_what_the_plan_gets(tmp_path):
    limit = tmp_path / "memory.max"
    limit.write_text(str(1 * GIB))
    info = host_info((limit,))
    assert info.ram_bytes == 1 * GIB and "container memory limit 1.0 GiB" in info.notes[0]


# --- snapshots -------------------------------------------------------------------------------


def test_snapshot_round_trip_keeps_everything_but_the_source(tmp_path):
    hw = probed("busy_a100_pcie_2x")
    path = tmp_path / "box.json"
    save_snapshot(hw, path)
    data = json.loads(path.read_text())
    assert data["snapshot_version"] == 1 and data["recorded_at"].startswith("20")
    assert data["fingerprint"] == hw.fingerprint()
    replayed = load_snapshot(path)
    assert replayed == replace(hw, source=str(path))
    assert replayed.fingerprint() == hw.fingerprint()


def test_mig_snapshot_round_trip(tmp_path):
    hw = probed("a100_mig_2slices")
    path = save_snapshot(hw, tmp_path / "mig.json")
    assert load_snapshot(path) == replace(hw, source=str(path))


def _write(tmp_path, content) -> Path:
    path = tmp_path / "snap.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _good(tmp_path) -> dict:
    return json.loads(save_snapshot(probed("mixed_4090_3090"), tmp_path / "good.json").read_text())


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda d: "{not json", "is not valid JSON"),
        (lambda d: [1, 2], "holds a list"),
        (lambda d: {k: v for k, v in d.items() if k != "devices"}, "lacks the keys ['devices']"),
        (lambda d: {k: v for k, v in d.items() if k != "snapshot_version"}, "lacks the keys ['snapshot_version']"),
        (lambda d: {**d, "snapshot_version": 9}, "snapshot_version 9"),
        (lambda d: {**d, "gpus": 2}, "unknown keys ['gpus']"),
        (
            lambda d: {**d, "devices": [{k: v for k, v in d["devices"][0].items() if k != "total_bytes"}]},
            "missing keys ['total_bytes']",
        ),
        (lambda d: {**d, "devices": [{**d["devices"][0], "free_bytes": "lots"}]}, "devices[0].free_bytes = 'lots'"),
        (lambda d: {**d, "devices": [{**d["devices"][0], "compute_capability": "ampere"}]}, "not like '8.0'"),
        (lambda d: {**d, "devices": "none"}, "not a list"),
    ],
)
def test_bad_snapshot_files_give_one_line_errors(tmp_path, mutate, words):
    path = _write(tmp_path, mutate(_good(tmp_path)))
    with pytest.raises(ShardwiseError) as err:
        load_snapshot(path)
    message = str(err.value)
    assert words in message and str(path) in message and "\n" not in message
    assert "shardwise probe probe.save=FILE" in message


def test_missing_snapshot_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(ShardwiseError, match=r"does not exist: record one with `shardwise probe probe.save="):
        load_snapshot(tmp_path / "nope.json")


def test_unwritable_snapshot_path_is_a_shardwise_error(tmp_path):
    with pytest.raises(ShardwiseError, match="cannot write the hardware snapshot"):
        save_snapshot(probed("mixed_4090_3090"), tmp_path / "missing-dir" / "x.json")


# --- resolving the hardware config node ----------------------------------------------------


def tier_cfg(**overrides):
    base = HardwareConfig(
        kind=HardwareKind.tier, name="NVIDIA H100 80GB HBM3", memory_mib=81559, compute_capability="9.0",
        interconnect=Interconnect.nvlink, count=1, nodes=1, host_ram_gib=256, cpu_count=32,
    )  # fmt: skip
    cfg = OmegaConf.structured(base)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def test_tier_scales_by_count_and_nodes_with_all_memory_free():
    hw = resolve_hardware(tier_cfg(count=2, nodes=3), name="h100_80gb")
    assert hw.source == "h100_80gb" and hw.nodes == 3 and hw.gpus_per_node == 2
    assert [(d.node, d.id) for d in hw.devices] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert all(d.total_bytes == d.free_bytes == 81559 * MIB for d in hw.devices)
    assert all(d.compute_capability == "9.0" and d.uuid == "" for d in hw.devices)
    assert hw.interconnect == "nvlink" and hw.nvlink_pairs == ((0, 1),)
    assert (hw.host_ram_bytes, hw.cpu_count) == (256 * GIB, 32)


def test_pcie_tier_has_no_nvlink_pairs():
    hw = resolve_hardware(tier_cfg(count=4, interconnect="pcie"), name="l4")
    assert len(hw.devices) == 4 and hw.nvlink_pairs == () and hw.interconnect == "pcie"


def test_tier_works_from_a_plain_dict():
    cfg = {
        "kind": "tier",
        "memory_mib": 24576,
        "compute_capability": "8.6",
        "count": 2,
        "host_ram_gib": 64,
        "cpu_count": 8,
    }
    hw = resolve_hardware(cfg, name="rtx3090")
    assert len(hw.devices) == 2 and hw.devices[0].name == "rtx3090"  # no GPU name given: the tier name


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("count", 0, "hardware.count must be >= 1"),
        ("nodes", 0, "hardware.nodes must be >= 1"),
        ("memory_mib", 0, "hardware.memory_mib must be > 0"),
        ("compute_capability", "9", "hardware.compute_capability must look like '8.0', got '9'"),
        ("compute_capability", "", "hardware.compute_capability must look like '8.0', got ''"),
        ("host_ram_gib", 0, "hardware.host_ram_gib must be > 0"),
        ("cpu_count", 0, "hardware.cpu_count must be >= 1"),
    ],
)
def test_bad_tier_values_give_one_line_errors(key, value, words):
    with pytest.raises(ShardwiseError) as err:
        resolve_hardware(tier_cfg(**{key: value}), name="h100_80gb")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_unknown_interconnect_in_a_dict_is_refused():
    cfg = {
        "kind": "tier",
        "memory_mib": 1,
        "compute_capability": "8.0",
        "interconnect": "infiniband",
        "host_ram_gib": 1,
        "cpu_count": 1,
    }
    with pytest.raises(ShardwiseError, match="got 'infiniband'"):
        resolve_hardware(cfg)


def test_snapshot_kind_needs_a_path():
    with pytest.raises(ShardwiseError) as err:
        resolve_hardware(OmegaConf.structured(HardwareConfig(kind=HardwareKind.snapshot)))
    assert (
        str(err.value)
        == "hardware=snapshot needs hardware.path=FILE (write one with `shardwise probe probe.save=FILE`)"
    )


def test_snapshot_kind_replays_the_file(tmp_path):
    path = save_snapshot(probed("h100_sxm_8x"), tmp_path / "box.json")
    hw = resolve_hardware(
        OmegaConf.structured(HardwareConfig(kind=HardwareKind.snapshot, path=str(path))), name="snapshot"
    )
    assert hw.source == str(path) and len(hw.devices) == 8 and hw.notes == ()


def test_auto_kind_probes_and_notes_tier_knobs_that_have_no_effect(monkeypatch):
    monkeypatch.setattr(probe_module, "probe", lambda: probed("mixed_4090_3090"))
    hw = resolve_hardware(OmegaConf.structured(HardwareConfig(kind=HardwareKind.auto, count=4)), name="auto")
    assert hw.source == "probe" and len(hw.devices) == 2
    assert hw.notes == (
        "hardware.count=4 has no effect with hardware kind auto: use a tier such as hardware=h100_80gb to size GPUs",
    )


def test_cpu_kind_uses_configured_host_or_this_machine_when_zero():
    hw = resolve_hardware({"kind": "cpu", "host_ram_gib": 32, "cpu_count": 4}, name="cpu")
    assert (hw.source, hw.devices, hw.host_ram_bytes, hw.cpu_count) == ("cpu", (), 32 * GIB, 4)
    assert hw.interconnect == "none"
    measured = resolve_hardware({"kind": "cpu", "host_ram_gib": 0, "cpu_count": 0}, name="cpu")
    here = host_info()
    assert (measured.host_ram_bytes, measured.cpu_count) == (here.ram_bytes, here.cpu_count)
    assert "measured on this machine" in measured.notes[0]


def test_unknown_kind_is_refused():
    with pytest.raises(ShardwiseError, match="hardware.kind must be one of"):
        resolve_hardware({"kind": "cloud"})


# --- the CLI, as a user runs it ---------------------------------------------------------------


def run_cli(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    return subprocess.run(
        [str(SHARDWISE), "probe", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.slow
def test_shardwise_probe_prints_a_table_without_traceback(tmp_path):
    result = run_cli(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "host:" in result.stdout and "fingerprint: hw-" in result.stdout


@pytest.mark.slow
def test_shardwise_probe_json_and_save_write_a_loadable_snapshot(tmp_path):
    result = run_cli(tmp_path, "probe.json=true", "probe.save=box.json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["source"] == "probe" and printed["host_ram_bytes"] > 0
    assert "snapshot saved to box.json" in result.stderr
    replayed = load_snapshot(tmp_path / "box.json")
    assert replayed.fingerprint() == printed["fingerprint"]
    assert len(replayed.devices) == len(printed["devices"])
    if not printed["devices"]:  # a CPU machine records its copy bandwidth, one thread and all cores, for CPU plans
        assert printed["host_memory_bandwidth_all_cores_gb_per_s"] >= printed["host_memory_bandwidth_gb_per_s"] > 0
        assert replayed.host_bandwidth_gb_per_s() == min(
            printed["cpu_count"] * printed["host_memory_bandwidth_gb_per_s"],
            printed["host_memory_bandwidth_all_cores_gb_per_s"],
        )


@pytest.mark.slow
def test_shardwise_probe_bad_save_path_is_one_line_exit_2(tmp_path):
    result = run_cli(tmp_path, "probe.save=no/such/dir/box.json")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("shardwise probe: error: cannot write the hardware snapshot")
    assert "Traceback" not in result.stderr


def test_probe_modules_import_neither_torch_nor_pynvml():
    code = (
        "import sys, planner.hardware.probe, shardwise.verbs.probe, planner.hardware.tiers, "
        "planner.hardware.visible_devices;"
        "bad = [m for m in ('torch', 'transformers', 'pynvml', 'runner') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "name",
    ["h100_sxm_8x", "busy_a100_pcie_2x", "a100_mig_2slices", "old_driver_v100_2x", "mixed_4090_3090", "h200_recorded"],
)
def test_recorder_reads_back_what_the_fake_answers(monkeypatch, name):
    """tests/record_nvml.py (run on real GPUs to make new snapshots) and the fake agree on the layout."""
    import record_nvml

    snapshot = load(name)
    monkeypatch.setattr(record_nvml, "nv", FakeNVML(snapshot))
    recorded = record_nvml.record("again")
    assert recorded["gpus"] == snapshot["gpus"]
    assert set(recorded["functions_missing"]) == set(snapshot["functions_missing"])
    assert (recorded["driver_version"], recorded["cuda_driver_version"]) == (
        snapshot["driver_version"],
        snapshot["cuda_driver_version"],
    )


# --- on a machine with an NVIDIA GPU (pytest -m gpu) ---------------------------------------------

_CUDA_COUNT = r"""
import ctypes, sys
cuda = ctypes.CDLL("libcuda.so.1")
count = ctypes.c_int(0)
if cuda.cuInit(0) == 0:
    cuda.cuDeviceGetCount(ctypes.byref(count))
print(count.value)
"""


def _cuda_sees(value: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    if value is not None:
        env["CUDA_VISIBLE_DEVICES"] = value
    result = subprocess.run([sys.executable, "-c", _CUDA_COUNT], env=env, capture_output=True, text=True, timeout=60)
    return int(result.stdout.strip())


@pytest.mark.gpu
def test_visible_devices_agree_with_the_cuda_driver():
    """The parser against the CUDA driver itself (cuDeviceGetCount); needs libcuda and one GPU or more."""
    hw = probe(environ={})
    if not hw.devices:
        pytest.skip("no NVIDIA GPU here")
    from planner.hardware.visible_devices import parse_cuda_visible_devices

    uuids = [d.uuid for d in hw.devices]
    u = uuids[0]
    values = [
        None,
        "",
        "0",
        " 0",
        "0,0",
        "0,abc",
        "-1",
        ",0",
        u,
        u[:8],
        u.upper(),
        " " + u[:8],
        u[:8] + ",0",
        "0," + u[:8],
        "MIG-" + u[4:12],
    ]
    differ = [(v, _cuda_sees(v), len(parse_cuda_visible_devices(v, uuids))) for v in values]
    assert [d for d in differ if d[1] != d[2]] == []
