"""Non-GPU parts of the benchmark scripts: argument parsing, the export, planning without Hydra.

.venv/bin/pytest benchmarks/tests -q
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import gpu_memory_check  # noqa: E402
import placement_vs_accelerate  # noqa: E402

# Runs a script with hydra, omegaconf (and optionally yaml) made unimportable.
BLOCKER = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
script = sys.argv[2]
sys.argv = [script] + sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""


def test_quick_flag_selects_the_quick_models_and_one_context():
    args = gpu_memory_check.parse_args(["--quick"])
    assert args.model_list == gpu_memory_check.QUICK_MODELS
    assert args.context_list == [4096]


def test_contexts_not_longer_than_the_decode_steps_are_refused():
    with pytest.raises(SystemExit):
        gpu_memory_check.parse_args(["--contexts", "8", "--new-tokens", "8"])


def test_unknown_sdpa_backend_is_refused():
    with pytest.raises(SystemExit):
        gpu_memory_check.parse_args(["--sdpa-kernels", "fastest"])


def test_out_defaults_to_the_OUT_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_memory_check.parse_args([]).out == tmp_path / "gpu_memory_check.json"


def test_export_holds_every_profile_tier_and_the_policy_defaults(tmp_path):
    path = _common.export_configs(tmp_path / "profiles.json")
    data = json.loads(path.read_text())
    assert sorted(data["models"]) == _common.model_profile_names()
    assert "auto" not in data["models"]
    assert data["hardware"]["h100_80gb"]["memory_mib"] == 81559
    assert data["policy"]["overhead"]["cuda_context_mib"] == 500
    assert "defaults" not in data["policy"]


def test_plan_without_hydra_matches_make_plan():
    from planner.config.compose import make_plan

    configs, _ = _common.load_configs()
    hw = _common.tier_hardware(configs, "l4", 2)
    ours = _common.plan_without_hydra(configs, "llama-3.1-8b", hw, {"context_tokens": 8192})
    reference = make_plan("llama-3.1-8b", "l4", ["hardware.count=2", "policy.context_tokens=8192"])
    assert ours.budget == reference.budget
    assert ours.device_map == reference.device_map
    assert ours.limits == reference.limits


def test_gpt_oss_is_planned_dequantized_for_the_gpu_check():
    configs, _ = _common.load_configs()
    hw = _common.tier_hardware(configs, "h100_80gb", 1)
    plan = gpu_memory_check.plan_case(configs, ("gpt-oss-20b", 4096, None, None), hw)
    assert plan.model.quantization.kept is False
    assert plan.attn_implementation == "eager"


def test_the_quantized_rows_keep_mxfp4_and_quantize_fp8_on_a_cut_down_model():
    """The GPU check's MXFP4 and FP8 rows: the plan keeps MXFP4 (H100), or quantizes to FP8 on load, for the
    profile cut to its first layers, with every per-layer list cut alike."""
    configs, _ = _common.load_configs()
    hw = _common.tier_hardware(configs, "h100_80gb", 1)
    rows = [c for c in gpu_memory_check.cases(configs, [], [4096]) if c[2]]
    assert [(c[0], c[2]) for c in rows] == [("gpt-oss-20b", "keep"), ("qwen3-8b", "fp8")]
    mxfp4, fp8 = (gpu_memory_check.plan_case(configs, case, hw) for case in rows)
    assert mxfp4.fits and mxfp4.model.quantization.kept and mxfp4.model.num_layers == rows[0][3]
    assert fp8.fits and fp8.model.quantization.on_load == "fp8" and fp8.model.num_layers == rows[1][3]
    cut = gpu_memory_check.cut_profile(configs["models"]["gpt-oss-20b"], 4)["architecture"]
    assert cut["num_hidden_layers"] == 4 and len(cut["layer_types"]) == 4


def test_contexts_are_capped_at_the_model_maximum():
    configs, _ = _common.load_configs()
    assert gpu_memory_check.cases(configs, ["gpt2"], [4096, 8192], quantized=False) == [("gpt2", 1024, None, None)]


def test_device_of_takes_the_longest_matching_key():
    dmap = {"model.embed_tokens": 0, "model.layers.1": 1, "model.layers.10": 2, "": "cpu"}
    assert placement_vs_accelerate.device_of("model.layers.1", dmap) == 1
    assert placement_vs_accelerate.device_of("model.layers.10", dmap) == 2
    assert placement_vs_accelerate.device_of("lm_head", dmap) == "cpu"


@pytest.mark.parametrize("blocked", ["hydra,omegaconf", "hydra,omegaconf,yaml"])
def test_gpu_check_dry_run_needs_neither_hydra_nor_omegaconf(blocked):
    if not _common.EXPORT_PATH.is_file():
        _common.export_configs()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKER,
            blocked,
            str(BENCH / "gpu_memory_check.py"),
            "--dry-run",
            "--models",
            "gpt2,qwen3-8b",
            "--contexts",
            "4096",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "qwen3-8b" in proc.stdout and "single_gpu" in proc.stdout
    assert "profiles.json" in proc.stdout  # without OmegaConf, conf/ is read through the export


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.slow
@pytest.mark.skipif(_has_cuda(), reason="this machine has CUDA: the script would measure")
def test_gpu_check_without_cuda_skips_with_exit_0():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_memory_check.py"), "--quick"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert "skipped" in proc.stdout


def test_the_speed_factor_fit_and_score_splits_are_frozen_and_disjoint():
    """Fit rows and score rows were fixed before scoring (issue 19): a shape moved or added after seeing a score
    fails here, and no shape is both fitted and scored."""
    import speed_prediction

    assert speed_prediction.SCORE_MODELS == {
        "llama-9m": (128, 4, 512, 4, 4),
        "llama-40m": (384, 6, 1024, 6, 2),
        "llama-150m": (768, 12, 2048, 12, 4),
        "llama-400m": (1024, 24, 2816, 16, 8),
        "llama-850m": (2048, 16, 5632, 32, 8),
    }
    assert speed_prediction.FIT_MODELS == {
        "fit-20m": (256, 8, 768, 4, 2),
        "fit-60m": (512, 3, 1536, 8, 8),
        "fit-120m": (640, 10, 1792, 10, 2),
        "fit-250m": (896, 20, 2432, 14, 2),
        "fit-500m": (1536, 8, 4096, 12, 4),
        "fit-800m": (1792, 20, 4864, 14, 2),
    }
    assert not set(speed_prediction.SCORE_MODELS.values()) & set(speed_prediction.FIT_MODELS.values())
