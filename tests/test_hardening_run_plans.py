"""Hand-edited plan files (issue 18, item 8): every field the runner hands to transformers, or sizes threads and
caches with, is range-checked when the plan is read, so a bad value is one line and exit 2 before anything loads;
the torchrun rank worker makes the same checks, and its own environment is checked too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cli_runner import shardwise
from test_hardening_run import error_line, here_plan
from tiny_models import tiny_gpt2

from planner.errors import ShardwiseError
from planner.planfile.plan import Plan, Serving

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return tiny_gpt2(tmp_path_factory.mktemp("models"))


def batched(plan, **kw):
    serving = Serving(
        mode="batched",
        reason="test",
        page_size_tokens=64,
        num_blocks=4,
        max_batch_tokens=64,
        max_concurrent=1,
        attn_implementation="sdpa",
    )
    return replace(plan, serving=replace(serving, **kw))


def edited(plan, edit) -> dict:
    data = json.loads(plan.to_json())
    edit(data)
    return data


HOSTILE = {
    "device_map -1": (lambda d: d["device_map"].update({"": -1}), "device_map[''] = -1"),
    "device_map meta": (lambda d: d["device_map"].update({"": "meta"}), "'meta' is not a device"),
    "device_map cuda": (lambda d: d["device_map"].update({"": "cuda"}), "'cuda' is not a device"),
    "max_memory negative": (lambda d: d["max_memory"].update({"cpu": -5}), "is not a size"),
    "hub kernel": (lambda d: d.update(attn_implementation="someone/evil-kernel"), "is not one shardwise plans"),
    "unknown attention": (lambda d: d.update(attn_implementation="flex_attention"), "is not one shardwise plans"),
    "max_new_tokens -1": (lambda d: d["limits"].update(max_new_tokens=-1), "limits.max_new_tokens=-1"),
    "max_new_tokens > context": (lambda d: d["limits"].update(max_new_tokens=10**9), "cannot outgrow"),
    "sessions 0": (lambda d: d["limits"].update(sessions=0), "limits.sessions=0"),
    "source NUL": (lambda d: d["model"].update(source="/tmp/a\x00b"), "control characters"),
    "source ~user": (lambda d: d["model"].update(source="~root/model"), "another user's home"),
    "fallbacks [{}]": (lambda d: d.update(fallbacks=[{}]), "fallbacks[0] names no model"),
    "binding.fixes 5": (lambda d: d.update(binding={"fixes": 5}), "binding.fixes must be a list"),
    "tp_size 0": (lambda d: d.update(tp_size=0), "tp_size=0"),
    "on_load unknown": (lambda d: d["model"]["quantization"].update(on_load="x"), "quantization.on_load='x'"),
    "quant method unknown": (lambda d: d["model"]["quantization"].update(method="int3"), "quantization.method='int3'"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_plan_values_are_refused_on_read_in_one_line(gpt2, case):
    edit, needle = HOSTILE[case]
    with pytest.raises(ShardwiseError) as caught:
        Plan.from_dict(edited(here_plan(gpt2), edit))
    message = str(caught.value)
    assert needle.replace(" = ", "=") in message.replace(" = ", "=") and "\n" not in message


@pytest.mark.parametrize(
    "serving, needle",
    [
        ({"max_concurrent": 100000}, "more than the plan's limits.sessions=1"),
        ({"num_blocks": 10**9}, "serving.num_blocks=1000000000"),
        ({"mode": "turbo"}, "serving.mode='turbo'"),
        ({"page_size_tokens": 0}, "page_size_tokens (1-4096)"),
        ({"attn_implementation": "org/kernel"}, "serving.attn_implementation='org/kernel'"),
    ],
)
def test_a_hostile_serving_block_is_bounded_by_the_plans_own_limits(gpt2, serving, needle):
    data = edited(batched(here_plan(gpt2)), lambda d: d["serving"].update(serving))
    with pytest.raises(ShardwiseError, match="serving"):
        Plan.from_dict(data)
    with pytest.raises(ShardwiseError) as caught:
        Plan.from_dict(data)
    assert needle in str(caught.value)


def test_the_planners_own_plans_pass_the_value_checks(gpt2):
    """The checks refuse only what the planner never writes: fresh plans of every serving kind read back whole."""
    from planner.config.compose import make_plan

    for overrides in ([], ["policy.sessions=4"], ["policy.attn_implementation=eager"]):
        plan = make_plan(model_path=str(gpt2), hardware="cpu", overrides=overrides)
        assert Plan.from_dict(json.loads(plan.to_json())).to_json() == plan.to_json()
    for model in ("gpt-oss-120b", "llama-3.1-8b", "gemma-3-1b"):
        big = make_plan(model=model, hardware="h100_80gb", overrides=["hardware.count=2", "policy.sessions=8"])
        assert big.serving is not None and Plan.from_dict(json.loads(big.to_json())).to_json() == big.to_json()


def test_a_serving_block_larger_than_the_device_is_refused_before_batching_starts(gpt2):
    from runner.engine.batching import cannot_attach
    from runner.engine.loader import load

    plan = batched(here_plan(gpt2))
    loaded = load(plan, log=lambda line: None)
    assert cannot_attach(loaded, plan.serving) is None
    huge = replace(plan.serving, num_blocks=10**12)
    reason = cannot_attach(loaded, huge)
    assert reason is not None and "more than this device's" in reason and "GiB" in reason


@pytest.mark.slow
def test_chat_with_a_hostile_plan_file_exits_2_before_loading(gpt2, tmp_path):
    for case in ("hub kernel", "device_map meta", "max_new_tokens -1"):
        edit, needle = HOSTILE[case]
        (tmp_path / "plan.json").write_text(json.dumps(edited(here_plan(gpt2), edit)))
        line = error_line(shardwise("chat", "plan_file=plan.json", "prompt=hi", cwd=tmp_path), "chat")
        assert "plan file" in line and "memory" not in line


def worker(plan_path, env: dict) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    return subprocess.run(
        [sys.executable, "-m", "runner.launch.worker", "--plan", str(plan_path), "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**clean, "HF_HUB_OFFLINE": "1", **env},
    )


TORCHRUN = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, env, needle",
    [
        ("outside torchrun", {}, "not set: this is one torchrun rank"),
        ("WORLD_SIZE=abc", {**TORCHRUN, "WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a number"),
        ("hostile plan", TORCHRUN, "is not a device shardwise loads on"),
        ("plan for a GPU", TORCHRUN, "places weights on GPU 3"),
    ],
)
def test_the_rank_worker_checks_its_environment_and_plan_in_one_line(gpt2, tmp_path, case, env, needle):
    plan = here_plan(gpt2)
    if case == "hostile plan":
        (tmp_path / "plan.json").write_text(json.dumps(edited(plan, lambda d: d["device_map"].update({"": "meta"}))))
    else:
        replace(plan, device_map={"": 3} if case == "plan for a GPU" else {}).save(tmp_path / "plan.json")
    result = worker(tmp_path / "plan.json", env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shardwise worker: error: ") and needle in lines[0], lines


def test_every_plan_field_has_a_json_type_the_plan_check_knows():
    """A field added to the Plan with a type the checker has no JSON word for is an error here, never a field
    that any hand-edited plan.json may fill with anything."""
    import dataclasses

    import planner.planfile.plan as plan_module
    from planner.planfile.plan_check import _allowed

    classes = {n: c for n, c in vars(plan_module).items() if isinstance(c, type) and dataclasses.is_dataclass(c)}
    assert {"Plan", "Limits", "DeviceBudget", "Decision"} <= set(classes)
    checked = 0
    for cls in classes.values():
        for field in dataclasses.fields(cls):
            kinds, _ = _allowed(field.type if isinstance(field.type, str) else field.type.__name__, classes)
            assert kinds, (cls.__name__, field.name)
            checked += 1
    assert checked > 40
    with pytest.raises(TypeError, match="cannot check the annotation"):
        _allowed("set[int]", classes)


def test_a_plan_file_naming_a_key_twice_is_refused_not_read_as_its_last_value(gpt2, tmp_path):
    """json.loads keeps the last of two equal keys: a reviewer who read `"attn_implementation": "sdpa"` would run
    what a second key further on says. A plan file is reviewed, so a duplicate key is one line."""
    text = here_plan(gpt2).to_json()
    assert text.count('"device_map": {') == 1
    path = tmp_path / "plan.json"
    path.write_text(text.replace('"device_map": {', '"device_map": {"": "cpu", "": "disk", ', 1))
    with pytest.raises(ShardwiseError) as caught:
        Plan.load(path)
    assert "the key '' appears twice in one object" in str(caught.value) and "\n" not in str(caught.value)
    path.write_text(text)
    assert Plan.load(path) == Plan.from_dict(json.loads(text))


@pytest.mark.parametrize(
    "device_map, needle",
    [
        ({"nonexistent.module": "cpu"}, "names 'nonexistent.module', which GPT2LMHeadModel does not have"),
        ({"": "cpu", "transformer.h.99": "cpu"}, "names 'transformer.h.99'"),
        ({"transformer.wte": "cpu"}, "places no device for"),
    ],
)
def test_a_device_map_naming_modules_the_model_lacks_or_leaving_some_out_is_refused(gpt2, device_map, needle):
    """transformers loads such a map without a word and puts what it misses on the CPU: a GPU plan would run where
    its budget never priced it. The loader compares the map with the model it built."""
    from runner.engine.loader import load

    plan = replace(here_plan(gpt2), device_map=device_map)
    with pytest.raises(ShardwiseError) as caught:
        load(plan, log=lambda line: None)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_a_device_map_of_whole_modules_that_covers_the_model_loads(gpt2):
    from transformers import AutoConfig

    from runner.engine.loader import load

    layers = AutoConfig.from_pretrained(gpt2).n_layer
    device_map = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"}
    device_map.update({f"transformer.h.{i}": "cpu" for i in range(layers)})
    loaded = load(replace(here_plan(gpt2), device_map=device_map), log=lambda line: None)
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}


def test_an_offload_folder_that_is_a_file_is_one_line_not_out_of_memory(gpt2, tmp_path):
    """os.makedirs on a file raised FileExistsError inside the load, and the recovery ladder called it memory."""
    from runner.engine.loader import load

    taken = tmp_path / "taken"
    taken.write_text("keep me")
    plan = replace(here_plan(gpt2), device_map={"": "disk"}, offload_folder=str(taken))
    with pytest.raises(ShardwiseError) as caught:
        load(plan, log=lambda line: None)
    assert "cannot be a directory here (File exists)" in str(caught.value)
    assert taken.read_text() == "keep me"


@pytest.mark.parametrize("value", [["a"], {"a": 1}, True, None])
def test_a_plan_file_value_that_names_no_file_is_one_line(value):
    """`plan_file=[a]`, `plan_file={a: 1}`: Hydra hands over a list or mapping, and Path() raised TypeError."""
    from omegaconf import OmegaConf

    given = OmegaConf.create({"v": value}).v
    with pytest.raises(ShardwiseError, match="is not a path: name a plan file"):
        Plan.load(given)


def test_a_numeric_plan_file_value_is_a_file_of_that_name(gpt2, tmp_path, monkeypatch):
    here_plan(gpt2).save(tmp_path / "5")
    monkeypatch.chdir(tmp_path)
    assert Plan.load(5).model.source == here_plan(gpt2).model.source


def test_launch_with_a_plan_file_that_is_a_list_is_one_line(tmp_path):
    result = shardwise("launch", "plan_file=[a]", "launch.dry_run=true", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "shardwise launch: error: plan_file=['a'] is not a path: name a plan file, e.g. plan_file=plan.json"
    ]
