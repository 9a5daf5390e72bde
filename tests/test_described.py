"""Stored meta-device descriptions (planner.model.described): shipped ones equal a fresh build, the HF-cache
copy makes the second plan torch-free, and no cache file, however damaged, can fail a plan.

If a test here says the shipped descriptions are stale, run `python -m planner.model.regenerate`
(after a transformers upgrade, a change to the builder or a profile) and commit planner/model/descriptions/.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from planner.config.reader import profile_names
from planner.model import describe_codec as codec
from planner.model import described, regenerate
from planner.model.architectures import ArchDescription, LayerRule, ModuleSpec, TensorSpec

ROOT = Path(__file__).resolve().parents[1]
PROFILES = [name for name in profile_names("model") if name != "auto"]
# built on the meta device before descriptions were stored: the plans that used to import torch
META_PROFILES = ("deepseek-v3", "qwen3-next-80b-a3b", "llama-4-scout")
TINY_OPT = dict(  # outside the fast path, builds in milliseconds
    model_type="opt",
    hidden_size=32,
    num_attention_heads=4,
    num_hidden_layers=3,
    ffn_dim=64,
    vocab_size=128,
    word_embed_proj_dim=32,
    max_position_embeddings=64,
    pad_token_id=1,
)
# a small DeepSeek-V3 (MLA, MoE, float32 rotary buffers): what the planner reads from a config.json path
TINY_DEEPSEEK = dict(
    architectures=["DeepseekV3ForCausalLM"],
    model_type="deepseek_v3",
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    first_k_dense_replace=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_routed_experts=4,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    kv_lora_rank=16,
    q_lora_rank=24,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=8,
    vocab_size=256,
    max_position_embeddings=512,
    tie_word_embeddings=False,
    torch_dtype="bfloat16",
)


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """huggingface_hub's assets cache under tmp_path (the subprocess form: HF_HOME=<returned path>)."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(home / "assets"))
    described.forget()
    yield home
    described.forget()


def _no_build(monkeypatch):
    """Make any meta-device build fail the test: a hit must not build."""
    import planner.model.meta as meta

    def refuse(*args):
        raise AssertionError("built on the meta device although a stored description exists")

    monkeypatch.setattr(meta, "describe_on_meta", refuse)


# ---- the shipped files ---------------------------------------------------------------------------
def test_every_profile_has_a_current_shipped_description():
    """No torch needed: the keys alone say whether transformers, the builder or a profile moved since regeneration."""
    stale = regenerate.stale_profiles()
    assert not stale, f"stale shipped descriptions {stale}: run `{described.REGENERATE}` and commit them"
    assert {name for name, _, _ in regenerate.profiles()} == set(PROFILES)


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
def test_shipped_description_equals_a_fresh_build_under_the_installed_transformers(profile):
    from planner.model.meta import describe_on_meta

    ((name, model_type, arch),) = [entry for entry in regenerate.profiles() if entry[0] == profile]
    for dtype in described.DTYPES:
        found, stale = described.shipped(model_type, arch, dtype)
        assert found is not None, (
            f"{profile}: no current shipped description for {dtype} (file made for {stale and stale['transformers']}, "
            f"transformers {described.transformers_version()} installed): run `{described.REGENERATE}`"
        )
        fresh = describe_on_meta(model_type, json.loads(json.dumps(arch)), dtype)
        assert found == fresh, (
            f"{profile}: the shipped description differs from a fresh meta build in {dtype}: "
            f"run `{described.REGENERATE}`"
        )


@pytest.mark.slow
def test_profile_plans_of_meta_families_say_their_description_was_shipped(monkeypatch):
    from planner.config.compose import make_plan

    _no_build(monkeypatch)
    described.forget()
    for profile in META_PROFILES:
        plan = make_plan(profile, "h100_80gb", ["hardware.count=8"])
        (decision,) = [d for d in plan.decisions if d.what == "architecture"]
        assert decision.value == "shipped description" and "transformers" in decision.reason


# ---- the codec -------------------------------------------------------------------------------------
def test_codec_round_trips_every_field_kind_and_reads_only_architecture_dataclasses():
    desc = ArchDescription(
        model_type="x",
        modules=(
            ModuleSpec(
                "m.embed",
                "embed",
                (
                    TensorSpec("m.embed.weight", 12, matrix=(1, 3, 4)),
                    TensorSpec("m.f", 2, is_param=False, persistent=False, fixed_dtype="float32"),
                ),
            ),
            ModuleSpec("lm_head", "head", (), tied_to="m.embed"),
        ),
        layers=(LayerRule("sliding", 128, moe=True, kv_elems_per_token=64, state_elems=3, state_fp32_elems=5),),
        hidden_size=4,
        vocab_size=3,
        num_attention_heads=1,
        num_kv_heads=1,
        head_dim=4,
        intermediate_size=8,
        max_context_tokens=64,
        tied_embeddings=True,
        no_split_module="Block",
        has_tp_plan=False,
        keep_fp32=("norm",),
        notes=("a note",),
    )
    back = codec.decode(json.loads(json.dumps(codec.encode(desc))))
    assert back == desc and isinstance(back.modules[0].tensors, tuple)
    assert codec.decode(codec.encode({"a": (1, 2)})) == {"a": (1, 2)}
    for foreign in ({"@": "Path"}, {"@": "TensorSpec", "name": "t", "numel": 1, "shell": "rm"}):
        with pytest.raises((KeyError, TypeError)):
            codec.decode(foreign)


def _tensors(*pins) -> ArchDescription:
    """A one-module description whose tensors hold these fixed_dtype values."""
    tensors = tuple(TensorSpec(f"m.t{i}", 4, fixed_dtype=pin) for i, pin in enumerate(pins))
    return ArchDescription("x", (ModuleSpec("m", "other", tensors),), (), 4, 3, 1, 1, 4, 8, 64, False, "B", False)


def test_dtype_free_form_keeps_pinned_tensors_and_lets_the_others_follow():
    # a weight that follows the load dtype, a float32 buffer, a tensor created in bfloat16 whatever the load dtype
    bf16, fp16 = _tensors(None, "float32", None), _tensors(None, "float32", "bfloat16")
    free = codec.neutral(bf16, "bfloat16", fp16, "float16")
    assert [t.fixed_dtype for t in free.modules[0].tensors] == [None, "float32", "bfloat16"]
    assert codec.for_dtype(free, "bfloat16") == bf16 and codec.for_dtype(free, "float16") == fp16
    assert [t.fixed_dtype for t in codec.for_dtype(free, "float32").modules[0].tensors] == [None, None, "bfloat16"]
    # anything else that changes with the dtype: no dtype-free form (stored per dtype instead)
    assert codec.neutral(bf16, "bfloat16", dataclasses.replace(fp16, notes=("float16",)), "float16") is None
    assert codec.neutral(_tensors(None), "bfloat16", _tensors("float32"), "float16") is None  # bf16 here, fp32 there


def test_a_stored_description_equals_a_fresh_build_in_every_dtype(hf_home):
    from planner.model.meta import describe_on_meta

    for dtype in described.DTYPES:
        described.describe("deepseek_v3", TINY_DEEPSEEK, dtype)  # the first builds and stores
    described.forget()
    for dtype in described.DTYPES:
        found, decision = described.describe("deepseek_v3", dict(TINY_DEEPSEEK), dtype)
        assert decision[1] == "cached description"
        assert found == describe_on_meta("deepseek_v3", dict(TINY_DEEPSEEK), dtype)


# ---- the HF-cache copy -----------------------------------------------------------------------------
def test_first_plan_builds_and_stores_the_second_reads_it(hf_home, monkeypatch):
    first, decision = described.describe("opt", TINY_OPT, "bfloat16")
    assert decision[1] == "built on the meta device" and str(hf_home) in decision[2]
    (stored,) = (hf_home / "assets" / "shardwise" / "described").glob("*/*.json")
    assert json.loads(json.loads(stored.read_text())["key"])["transformers"] == described.transformers_version()
    described.forget()
    _no_build(monkeypatch)
    for dtype in ("bfloat16", "float16"):  # one dtype-free file serves every dtype
        again, decision = described.describe("opt", dict(TINY_OPT), dtype)
        assert decision[1] == "cached description"
    assert described.describe("opt", TINY_OPT, "bfloat16")[0] == first


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(b"\x00\xff not json", id="binary"),
        pytest.param(b'{"key": 3}', id="wrong-key-type"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(b"{" * 10_000, id="deep"),
        pytest.param("key", id="foreign-description"),
        pytest.param("big", id="oversized"),
    ],
)
def test_a_damaged_or_foreign_cache_file_is_rebuilt_never_a_traceback(hf_home, monkeypatch, damage):
    first, _ = described.describe("opt", TINY_OPT, "bfloat16")
    (stored,) = (hf_home / "assets" / "shardwise" / "described").glob("*/*.json")
    good = stored.read_text()
    if damage == "key":  # the right key over a description naming a class the codec does not read
        stored.write_text(json.dumps({"key": json.loads(good)["key"], "description": {"@": "Popen", "args": "x"}}))
    elif damage == "big":
        monkeypatch.setattr(described, "MAX_FILE_BYTES", len(good) - 1)
    else:
        stored.write_bytes(damage)
    described.forget()
    again, decision = described.describe("opt", TINY_OPT, "bfloat16")
    assert again == first and decision[1] == "built on the meta device"
    if damage != "big":
        assert stored.read_text() == good  # rewritten whole


def test_an_unwritable_cache_directory_costs_the_build_not_the_plan(tmp_path, monkeypatch):
    from huggingface_hub import constants

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(blocker / "assets"))
    described.forget()
    desc, decision = described.describe("opt", TINY_OPT, "float32")
    assert desc.model_type == "opt" and "not stored" in decision[2]
    described.forget()


def test_another_transformers_version_misses_the_shipped_file_and_says_so(hf_home, monkeypatch):
    (_, model_type, arch), *_ = [e for e in regenerate.profiles() if e[0] == "gpt2"]
    assert described.describe(model_type, arch, "float32")[1][1] == "shipped description"
    installed = described.transformers_version()
    monkeypatch.setattr(described, "transformers_version", lambda: "0.0.1")
    described.forget()
    desc, decision = described.describe(model_type, arch, "float32")
    assert decision[1] == "built on the meta device"
    assert f"made with transformers {installed}" in decision[2] and "under transformers 0.0.1" in decision[2]
    assert desc.model_type == "gpt2"


# ---- whole plans in fresh processes ---------------------------------------------------------------
_WATCH = (
    "import os, sys\n"
    "try:\n"
    "    from runner.cli import main\n"
    "    main()\n"
    "finally:\n"
    "    heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
    "    open(os.environ['HEAVY_OUT'], 'w').write(' '.join(heavy) or 'none')\n"
)


def _plan_watched(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, str]:
    """`shardwise ARGS` in a fresh process; its output and the heavy modules it had imported at exit."""
    out = tmp_path / "heavy.txt"
    env = {**os.environ, "HEAVY_OUT": str(out), "COLUMNS": "160", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", _WATCH, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    return result, out.read_text() if out.is_file() else "(not written)"


@pytest.mark.slow
@pytest.mark.parametrize("profile", META_PROFILES)
def test_plan_of_a_meta_family_profile_imports_neither_torch_nor_transformers(tmp_path, profile):
    result, heavy = _plan_watched(tmp_path, "plan", f"model={profile}", "json=true")
    assert result.returncode == 0, result.stderr[-2000:]
    assert heavy == "none"


@pytest.mark.slow
def test_no_profile_plan_imports_torch_or_transformers(tmp_path):
    """Every profile, a few per multirun process: whatever any plan imported is still in sys.modules at exit."""
    batches, batch = [], []
    for name in PROFILES:  # main's model= check stats the value as a path: keep each list under NAME_MAX
        if batch and len(",".join([*batch, name])) > 200:
            batches.append(batch)
            batch = []
        batch.append(name)
    batches.append(batch)
    for i, batch in enumerate(batches):
        cwd = tmp_path / str(i)
        cwd.mkdir()
        result, heavy = _plan_watched(cwd, "plan", "-m", f"model={','.join(batch)}", "hardware=h100_80gb")
        assert result.returncode == 0, result.stderr[-2000:]
        assert heavy == "none", batch
        assert len(list(cwd.glob("multirun/**/plan.json"))) == len(batch)


def test_second_plan_of_a_config_json_imports_neither_torch_nor_transformers(tmp_path, hf_home):
    from planner.model.inventory import build_inventory
    from planner.model.source import spec_from_config

    model_dir = tmp_path / "tiny-deepseek"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(TINY_DEEPSEEK))
    spec = spec_from_config({"path": str(model_dir)})  # what the CLI reads from the path
    first = build_inventory(spec.architecture, dtype="bfloat16", model_dir=spec.model_dir)
    assert first.provenance[0][1] == "built on the meta device"
    env = {"HF_HOME": str(hf_home), "HF_ASSETS_CACHE": str(hf_home / "assets")}
    result, heavy = _plan_watched(
        tmp_path, "plan", f"model.path={model_dir}", "hardware=h100_80gb", "json=true", env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert heavy == "none"
    plan = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert plan["model"]["params_total"] == first.params_total
    assert [d["value"] for d in plan["decisions"] if d["what"] == "architecture"] == ["cached description"]


@pytest.mark.slow
def test_first_plan_of_a_config_json_builds_and_the_second_does_not(tmp_path):
    model_dir = tmp_path / "tiny-opt"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(TINY_OPT))
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_ASSETS_CACHE": str(tmp_path / "hf" / "assets")}
    args = ("plan", f"model.path={model_dir}", "hardware=t4", "json=true")
    plans = []
    for expect_heavy in ("torch transformers", "none"):
        result, heavy = _plan_watched(tmp_path, *args, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert heavy == expect_heavy
        plans.append(json.loads(result.stdout[: result.stdout.rindex("}") + 1]))
    decisions = [[d for d in p["decisions"] if d["what"] == "architecture"][0]["value"] for p in plans]
    assert decisions == ["built on the meta device", "cached description"]
    for plan in plans:
        plan["decisions"] = [d for d in plan["decisions"] if d["what"] != "architecture"]
    assert plans[0] == plans[1]
