"""Hardening, round 3 (issue 18): files named by the user are written through links and to devices, never
opened blocking, read with the same caps from the HF cache; a plan file's environment is data; run
directories, Hydra edges and quantization settings are one-line errors, never a traceback or a hang."""

from __future__ import annotations

import json
import os
import stat
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from cli_runner import shardwise
from test_hardening import one_line_error
from tiny_models import TINY_LLAMA_CONFIG

DEEP = "[" * 100_000 + "]" * 100_000


def _a_plan():
    from planner.config.compose import make_plan

    return make_plan("gpt2", "t4")


def within(seconds: float, fn, *args):
    """fn(*args) in a daemon thread: its result or exception, or a failure (not a hang) after `seconds`."""
    box = {}

    def body():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --- item 1: out=, probe.save=, calibrate out= write through links and to devices -------------------


def test_a_symlinked_out_writes_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "real" / "plan.json"
    target.parent.mkdir()
    target.write_text("old\n")
    target.chmod(0o600)
    link = tmp_path / "plan.json"
    link.symlink_to(target)
    _a_plan().save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert json.loads(target.read_text())["model"]["name"] == "gpt2"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # a replaced file keeps the mode its owner gave it
    assert sorted(p.name for p in target.parent.iterdir()) == ["plan.json"]  # no temp file left


def test_a_dangling_symlink_as_out_creates_its_target(tmp_path):
    link = tmp_path / "plan.json"
    link.symlink_to(tmp_path / "elsewhere.json")
    _a_plan().save(link)
    assert link.is_symlink() and json.loads((tmp_path / "elsewhere.json").read_text())["model"]["name"] == "gpt2"


def test_out_dev_null_writes_and_stays_a_character_device(tmp_path):
    result = shardwise("plan", "model=gpt2", "hardware=t4", "out=/dev/null", "json=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert json.loads(result.stdout)["model"]["name"] == "gpt2"


def test_a_snapshot_saved_to_a_symlinked_dev_null_leaves_both_alone(tmp_path):
    from planner.hardware.snapshot import save_snapshot
    from planner.hardware.tiers import resolve_hardware

    link = tmp_path / "box.json"
    link.symlink_to("/dev/null")
    from planner.config.compose import compose

    save_snapshot(resolve_hardware(compose("plan", ["hardware=t4"]).hardware, name="t4"), link)
    assert link.is_symlink() and stat.S_ISCHR(os.stat(link).st_mode)


def test_a_fifo_nobody_reads_as_out_is_one_line_not_a_hang(tmp_path):
    os.mkfifo(tmp_path / "pipe.json")
    result = shardwise("plan", "model=gpt2", "hardware=t4", "out=pipe.json", "json=true", cwd=tmp_path, timeout=60)
    one_line_error(result, "plan", "cannot write the plan to")
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe.json").st_mode)


def test_a_fifo_with_a_reader_as_out_gets_the_plan(tmp_path):
    from planner.files import write_text

    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    got = {}
    reader = threading.Thread(target=lambda: got.update(text=fifo.read_text()), daemon=True)
    reader.start()
    for _ in range(200):  # wait until the reader has the FIFO open, or the non-blocking open finds nobody
        try:
            within(10, write_text, fifo, "hello\n")
            break
        except OSError:
            threading.Event().wait(0.02)
    reader.join(10)
    assert got.get("text") == "hello\n" and stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.parametrize("verb", ["probe", "calibrate"])
def test_a_directory_as_a_snapshot_path_is_one_line_and_left_alone(tmp_path, verb):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("mine")
    key = "probe.save" if verb == "probe" else "out"
    if verb == "calibrate":
        from planner.config.compose import compose
        from planner.errors import ShardwiseError
        from planner.hardware.snapshot import save_snapshot
        from planner.hardware.tiers import resolve_hardware

        with pytest.raises(ShardwiseError, match="cannot write the hardware snapshot.*Is a directory"):
            save_snapshot(resolve_hardware(compose("plan", ["hardware=t4"]).hardware, name="t4"), tmp_path / "keep")
    else:
        result = shardwise(verb, f"{key}=keep", cwd=tmp_path, timeout=120)
        one_line_error(result, verb, "Is a directory")
    assert [p.name for p in (tmp_path / "keep").iterdir()] == ["mine.txt"]


# --- item 2: a plan file's launch.env is data ---------------------------------------------------------


def test_launch_env_keeps_only_what_shardwise_writes():
    from planner.plan import LAUNCH_ENV_KEYS, Launch

    fresh = _a_plan().launch
    assert set(fresh.env) <= set(LAUNCH_ENV_KEYS) and fresh.safe_env() == (fresh.env, [])
    hostile = Launch("x", {"PYTHONPATH": "/tmp/evil", "LD_PRELOAD": "/tmp/x.so", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert hostile.safe_env() == ({"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, ["PYTHONPATH", "LD_PRELOAD"])


@pytest.mark.slow
def test_a_plan_files_pythonpath_never_runs_its_sitecustomize(tmp_path):
    from tiny_models import cpu_plan, tiny_llama

    evil = tmp_path / "evil"
    evil.mkdir()
    marker = tmp_path / "ran.txt"
    (evil / "sitecustomize.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    plan = cpu_plan(tiny_llama(tmp_path / "models"), max_new_tokens=2)
    env = {"PYTHONPATH": str(evil), "LD_PRELOAD": "/nonexistent/x.so", "PYTORCH_CUDA_ALLOC_CONF": "x"}
    plan = replace(plan, launch=replace(plan.launch, env=env))
    plan.save(tmp_path / "plan.json")
    dry = shardwise("launch", "plan_file=plan.json", "launch.dry_run=true", cwd=tmp_path, timeout=120)
    assert dry.returncode == 0 and "PYTHONPATH, LD_PRELOAD: not passed on" in dry.stdout, dry.stdout + dry.stderr
    assert "PYTHONPATH=" not in dry.stdout and "LD_PRELOAD=" not in dry.stdout  # nor in the printed commands
    result = shardwise(
        "launch",
        "plan_file=plan.json",
        "launch.check_hardware=false",
        "launch.prompt=[hi]",
        cwd=tmp_path,
        timeout=300,
    )
    assert "shardwise launch: " in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "PYTHONPATH, LD_PRELOAD: not passed on" in result.stderr
    assert not marker.exists()  # the child started (its command line is printed) without the plan's PYTHONPATH


# --- item 4: FIFOs and devices are never opened blocking -------------------------------------------------


def _model_dir(tmp_path: Path) -> Path:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(TINY_LLAMA_CONFIG))
    return model


@pytest.mark.parametrize(
    "fifo",
    [
        "model.safetensors",
        "model-00001-of-00002.safetensors",
        "config.json",
        "generation_config.json",
        "hf_quant_config.json",
    ],
)
def test_a_fifo_in_a_model_directory_is_refused_not_waited_on(tmp_path, fifo):
    from planner.config.compose import make_plan
    from planner.errors import ShardwiseError

    model = _model_dir(tmp_path)
    (model / fifo).unlink(missing_ok=True)
    os.mkfifo(model / fifo)
    with pytest.raises(ShardwiseError, match=r"is a FIFO \(named pipe\), not a regular file"):
        within(30, make_plan, "gpt2", "t4", [], str(model))


def test_a_fifo_safetensors_on_the_cli_is_one_line(tmp_path):
    model = _model_dir(tmp_path)
    os.mkfifo(model / "model.safetensors")
    result = shardwise("plan", "model.path=m", "hardware=t4", cwd=tmp_path, timeout=60)
    one_line_error(result, "plan", "is a FIFO")


@pytest.mark.parametrize("verb,key", [("chat", "plan_file"), ("launch", "plan_file"), ("plan", "hardware.path")])
def test_a_fifo_given_as_an_input_file_is_one_line(tmp_path, verb, key):
    os.mkfifo(tmp_path / "in.json")
    args = ["hardware=snapshot"] if key == "hardware.path" else ["prompt=hi"] if verb == "chat" else []
    result = shardwise(verb, f"{key}=in.json", *args, cwd=tmp_path, timeout=60)
    one_line_error(result, verb, "is a FIFO")


def test_a_character_device_is_not_read_as_a_plan():
    from planner.errors import ShardwiseError
    from planner.plan import Plan

    with pytest.raises(ShardwiseError, match="is a character device"):
        within(10, Plan.load, "/dev/zero")


def test_the_runner_refuses_a_model_directory_holding_a_fifo(tmp_path):
    from tiny_models import cpu_plan

    from planner.errors import ShardwiseError
    from runner.engine.preflight import check_runnable

    model = _model_dir(tmp_path)
    (model / "tokenizer_config.json").write_text("{}")
    os.mkfifo(model / "tokenizer.json")  # the planner never reads it, transformers would wait on it forever
    with pytest.raises(ShardwiseError, match="holds 'tokenizer.json', which is not a regular file"):
        within(10, check_runnable, cpu_plan(model))
