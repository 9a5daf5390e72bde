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


def test_out_dev_fd_adds_to_the_open_file_instead_of_replacing_it(tmp_path):
    from planner.files import write_text

    target = tmp_path / "x.json"
    with open(target, "w") as shell_redirect:  # what `shardwise plan out=/dev/stdout > x.json` hands us
        shell_redirect.write("report\n")
        shell_redirect.flush()
        inode = os.stat(target).st_ino
        write_text(f"/dev/fd/{shell_redirect.fileno()}", "plan\n")
    assert target.read_text() == "report\nplan\n" and os.stat(target).st_ino == inode


def test_charts_are_not_drawn_beside_dev_null(tmp_path):
    before = set(os.listdir("/dev"))
    result = shardwise("plan", "model=gpt2", "hardware=t4", "out=/dev/null", "json=true", "charts=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert set(os.listdir("/dev")) - before == set() and "not a regular file" in result.stderr


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
    for _ in range(1000):  # wait until the reader has the FIFO open, or the non-blocking open finds nobody
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
    from planner.planfile.plan import LAUNCH_ENV_KEYS, Launch

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


@pytest.mark.parametrize(
    "args, needle",
    [
        (["launch", "plan_file=loop.json"], "Too many levels of symbolic links"),
        (["plan", "model=gpt2", "hardware=t4", "policy.offload_folder=loop.json", "out=p.json"], None),
        (["launch", "plan_file=p.json", "launch.dry_run=true", "hydra.run.dir=loop.json/x"], "loop.json/x"),
    ],
)
def test_a_symlink_loop_as_a_path_is_one_line_not_a_runtime_error(tmp_path, args, needle):
    """Python 3.11's Path.resolve() raises RuntimeError on a symlink loop (3.13: OSError); every path a user names
    is resolved through planner.files.resolved, so a loop is a file error like any other."""
    os.symlink(tmp_path / "loop2.json", tmp_path / "loop.json")
    os.symlink(tmp_path / "loop.json", tmp_path / "loop2.json")
    _a_plan().save(tmp_path / "p.json")
    result = shardwise(*args, cwd=tmp_path, timeout=60)
    assert "Traceback" not in result.stderr and "RuntimeError" not in result.stderr, result.stderr[-2000:]
    if needle is None:  # a loop as the offload folder leaves no room to offload to; the plan itself is made
        assert result.returncode == 0, result.stderr[-2000:]
    else:
        one_line_error(result, args[0], needle)
    assert os.path.islink(tmp_path / "loop.json") and os.path.islink(tmp_path / "loop2.json")


def test_a_character_device_is_not_read_as_a_plan():
    from planner.errors import ShardwiseError
    from planner.planfile.plan import Plan

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
        within(60, check_runnable, cpu_plan(model))  # generous: it may import torch on a loaded machine


# --- item 5: every quantization field a format uses is checked, with its range, in one place -------------


def _plan_config(tmp_path: Path, **changes):
    from planner.config.compose import make_plan

    model = tmp_path / "m"
    model.mkdir(exist_ok=True)
    config = {**TINY_LLAMA_CONFIG, "architectures": ["LlamaForCausalLM"], **changes}
    (model / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return make_plan("gpt2", "t4", [], str(model))


QC = "quantization_config"


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes,needle",
    [
        ({QC: {"quant_method": "fp8", "weight_block_size": "x"}}, "weight_block_size is 'x'"),
        ({QC: {"quant_method": "fp8", "weight_block_size": [0, 0]}}, "weight_block_size is [0, 0]"),
        ({QC: {"quant_method": "fp8", "weight_block_size": [-128, 128]}}, "weight_block_size is [-128, 128]"),
        ({QC: {"quant_method": "gptq", "bits": "four"}}, "bits is 'four', not one of 2, 3, 4, 8"),
        ({QC: {"quant_method": "gptq", "bits": 0}}, "bits is 0"),
        ({QC: {"quant_method": "awq", "bits": 99}}, "bits is 99"),
        ({QC: {"quant_method": "gptq", "group_size": 0}}, "group_size is 0"),
        ({QC: {"quant_method": ["fp8"]}}, "quant_method is ['fp8'], not a string"),
        ({QC: {"quant_method": "compressed-tensors", "config_groups": [1]}}, "config_groups is [1], not an object"),
        ({QC: {"quant_method": "compressed-tensors", "config_groups": {"g": "x"}}}, "config_groups.g is 'x'"),
        (
            {QC: {"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {"num_bits": "x"}}}}},
            "weights.num_bits is 'x'",
        ),
        ({QC: {"quant_method": "bitsandbytes", "load_in_4bit": "yes"}}, "load_in_4bit is 'yes', not true or false"),
        ({QC: {"quant_method": "fp8", "modules_to_not_convert": 5}}, "modules_to_not_convert is 5"),
        ({"model_type": ""}, "model_type in config.json is ''"),
        (
            {"model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 0},
            "decoder_sparse_step in config.json is 0",
        ),
        ({"model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 8}, "num_experts_per_tok in config"),
        ({"model_type": "bert", "architectures": ["BertModel"]}, "not a causal language model"),
        ({"model_type": "bert", "architectures": None}, "not a causal language model"),
        ({"architectures": ["LlamaForSequenceClassification"]}, "not a causal language model"),
    ],
)
def test_quantization_and_config_values_that_mean_nothing_are_one_line(tmp_path, changes, needle):
    from planner.errors import ShardwiseError

    with pytest.raises(ShardwiseError) as caught:
        _plan_config(tmp_path, **changes)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_an_hf_quant_config_that_is_a_list_is_one_line(tmp_path):
    from planner.errors import ShardwiseError

    model = tmp_path / "m"
    model.mkdir()
    (model / "hf_quant_config.json").write_text("[1, 2]")
    with pytest.raises(ShardwiseError, match="holds a list at the top"):
        _plan_config(tmp_path)


@pytest.mark.parametrize("quantization", ['"fp8"', "[1]", "5"])
def test_an_hf_quant_config_whose_quantization_is_no_object_is_one_line(tmp_path, quantization):
    """`{"quantization": "fp8"}` was indexed as a dict (AttributeError) before the format's own checks ran."""
    from planner.errors import ShardwiseError

    model = tmp_path / "m"
    model.mkdir()
    (model / "hf_quant_config.json").write_text(f'{{"quantization": {quantization}}}')
    with pytest.raises(ShardwiseError, match=r"hf_quant_config.json.quantization is .*, not an object"):
        _plan_config(tmp_path)


@pytest.mark.parametrize("bits", [0, 1, 2, 3, 4, 5, 8, 16, -1])
@pytest.mark.parametrize("group_size", [-1, 0, 1, 128, -5])
def test_gptq_bits_and_group_size_ranges_are_transformers_own(bits, group_size):
    """The ranges are written out (no transformers import when planning) and must agree with GPTQConfig's."""
    from transformers import GPTQConfig

    from planner.errors import ShardwiseError
    from planner.model.quant import parse_format

    try:
        GPTQConfig(bits=bits, group_size=group_size)
        library_accepts = True
    except ValueError:
        library_accepts = False
    try:
        parse_format({"quant_method": "gptq", "bits": bits, "group_size": group_size})
        we_accept = True
    except ShardwiseError:
        we_accept = False
    assert we_accept == library_accepts


@pytest.mark.parametrize("block", [[128, 128], [0, 128], [128, -1], [64, 32]])
def test_fp8_block_sizes_agree_with_transformers(block):
    from transformers import FineGrainedFP8Config

    from planner.errors import ShardwiseError
    from planner.model.quant import parse_format

    try:
        FineGrainedFP8Config(weight_block_size=tuple(block))
        library_accepts = True
    except ValueError:
        library_accepts = False
    try:
        fmt = parse_format({"quant_method": "fp8", "weight_block_size": block})
        we_accept = fmt.block == tuple(block)
    except ShardwiseError:
        we_accept = False
    assert we_accept == library_accepts


def test_valid_quantization_configs_still_size():
    from planner.model.quant import parse_format

    assert parse_format({"quant_method": "gptq", "bits": 4, "group_size": -1}).group_size == -1
    assert parse_format({"quant_method": "awq", "w_bit": 4, "q_group_size": 64}).group_size == 64
    ct = {
        "quant_method": "compressed-tensors",
        "config_groups": {"group_0": {"weights": {"num_bits": 4, "strategy": "group", "group_size": 32}}},
    }
    assert (parse_format(ct).bits, parse_format(ct).group_size) == (4, 32)


# --- item 6: the HF cache path reads through the same safe reader ---------------------------------------


def _cached_repo(hf_home: Path, repo_id: str, files: dict[str, str]) -> str:
    """A hand-made HF cache entry (what `hf download` leaves): refs/main -> snapshots/<sha>/<files>."""
    sha = "a" * 40
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    return sha


@pytest.mark.slow
@pytest.mark.parametrize(
    "files,needle",
    [
        ({"config.json": DEEP}, "config.json' nests deeper than 64 levels: delete it from the HF cache"),
        ({"config.json": '{"n": ' + "1" * 5000 + "}"}, "config.json' is not valid JSON (Exceeds the limit"),
        (
            {"config.json": json.dumps(TINY_LLAMA_CONFIG), "hf_quant_config.json": DEEP},
            "hf_quant_config.json' nests deeper than 64 levels: delete it from the HF cache",
        ),
        (
            {"config.json": json.dumps({**TINY_LLAMA_CONFIG, "num_experts_per_tok": "x"})},
            "num_experts_per_tok in config.json is 'x'",
        ),
    ],
)
def test_cached_hub_files_get_the_size_nesting_and_config_checks(tmp_path, files, needle):
    _cached_repo(tmp_path / "hf", "org/m", files)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = shardwise("plan", "model=org/m", "hardware=t4", cwd=tmp_path, env_extra=env, timeout=60)
    one_line_error(result, "plan", needle)


def test_a_hostile_cached_header_table_is_ignored_not_a_traceback(tmp_path, monkeypatch):
    from planner.model import hub

    table = tmp_path / "safetensors_headers.json"
    table.write_text(DEEP)
    assert hub._table_result(table, "cached")[0] is None
    table.write_text("[1]")
    assert "unreadable" in hub._table_result(table, "cached")[1]


# --- item 7: hardware snapshots: every host field checked, NaN never reaches plan.json --------------------


SNAPSHOT = {
    "snapshot_version": 1,
    "devices": [
        {
            "id": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "total_bytes": 85899345920,
            "free_bytes": 84000000000,
            "compute_capability": "9.0",
            "uuid": "GPU-1",
        },
        {
            "id": 1,
            "name": "NVIDIA H100 80GB HBM3",
            "total_bytes": 85899345920,
            "free_bytes": 84000000000,
            "compute_capability": "9.0",
            "uuid": "GPU-2",
        },
    ],
    "host_ram_bytes": 1 << 36,
}


def _with(path: str, value) -> dict:
    data = json.loads(json.dumps(SNAPSHOT))
    node, keys = data, path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if key.isdigit() else node[key]
    node[int(keys[-1]) if keys[-1].isdigit() else keys[-1]] = value
    return data


@pytest.mark.slow
@pytest.mark.parametrize(
    "snapshot,needle",
    [
        (_with("host_ram_bytes", 10**400), "host_ram_bytes = 1000000000"),
        (_with("cpu_count", "fast"), "cpu_count = 'fast'"),
        (_with("cpu_count", -4), "cpu_count = -4"),
        (_with("pcie_gb_per_s", "fast"), "pcie_gb_per_s must be a number"),
        (_with("host_memory_bandwidth_gb_per_s", float("nan")), "must be a finite number, not nan"),
        (_with("nvlink_gb_per_s", float("inf")), "must be a finite number, not inf"),
        (_with("network_gb_per_s", -1.0), "network_gb_per_s = -1.0, not a speed"),
        (_with("host_bf16_tflops", 10**400), "is too large"),
        (_with("devices.0.memory_bandwidth_gb_per_s", float("nan")), "devices[0].memory_bandwidth_gb_per_s"),
        (_with("devices.0.total_bytes", 10**400), "devices[0].total_bytes"),
        (_with("devices.1.uuid", "GPU-1"), "with the same uuid 'GPU-1'"),
        (_with("devices.0.reserved_bytes", 10**12), "reserved_bytes = 1000000000000 above its total_bytes"),
        (_with("speed_factors", {"gpu": {"bandwidth_efficiency": float("nan")}}), "speed_factors.gpu."),
        (_with("installed", {"triton": 3}), "installed = {'triton': 3}"),
    ],
)
def test_hostile_snapshot_host_fields_are_one_line(tmp_path, snapshot, needle):
    (tmp_path / "box.json").write_text(json.dumps(snapshot))  # Python writes NaN/Infinity, as a hostile file may
    result = shardwise("plan", "hardware=snapshot", "hardware.path=box.json", "json=true", cwd=tmp_path)
    one_line_error(result, "plan", needle)


def test_plan_json_is_strict_json_and_a_nan_never_reaches_it(tmp_path):
    from planner.errors import ShardwiseError

    plan = _a_plan()
    text = plan.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"plan.json holds {c}"))
    bad = replace(plan, hardware={**plan.hardware, "pcie_gb_per_s": float("nan")})
    with pytest.raises(ShardwiseError, match=r"plan.hardware.pcie_gb_per_s = nan is not a finite number"):
        bad.save(tmp_path / "plan.json")
    assert not (tmp_path / "plan.json").exists()


# --- item 11: run-directory clean-up removes only what the run created --------------------------------------


def test_run_dir_dot_in_an_empty_directory_keeps_the_directory(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    result = shardwise("plan", "model=gpt2", "hardware=t4", "json=true", "hydra.run.dir=.", cwd=work)
    assert result.returncode == 0, result.stderr
    assert work.is_dir() and list(work.iterdir()) == []  # and Hydra's .hydra/ it added is taken back


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["plan", "probe"])
def test_a_users_empty_run_dir_survives_and_gets_nothing_left_in_it(tmp_path, verb):
    (tmp_path / "keepme").mkdir()
    args = ["model=gpt2", "hardware=t4", "json=true"] if verb == "plan" else []
    result = shardwise(verb, *args, "hydra.run.dir=keepme", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "keepme").is_dir() and list((tmp_path / "keepme").iterdir()) == []


def test_a_run_dir_under_an_existing_empty_parent_takes_back_only_what_it_made(tmp_path):
    (tmp_path / "mine").mkdir()
    result = shardwise("plan", "model=gpt2", "hardware=t4", "json=true", "hydra.run.dir=mine/a/b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mine"] and list((tmp_path / "mine").iterdir()) == []


def test_a_run_dir_the_user_filled_keeps_everything(tmp_path):
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    result = shardwise("plan", "model=gpt2", "hardware=t4", "hydra.run.dir=keep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {"notes.txt", "plan.json"} <= {p.name for p in (tmp_path / "keep").iterdir()}


# --- item 12: Hydra edges are one line, and --experimental-rerun never unpickles ------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["=1"], "'=1' has no key before '='"),
        (["policy.context_tokens=???"], "policy.context_tokens has no value"),
        (["--config-dir", "/nonexistent"], "'/nonexistent' not found"),
        (["hydra.run.dir=???"], "hydra.run.dir=??? names no directory"),
    ],
)
def test_hydra_edges_are_one_line(tmp_path, args, needle):
    result = shardwise("plan", "model=gpt2", "hardware=t4", *args, cwd=tmp_path)
    one_line_error(result, "plan", needle)
    assert list(tmp_path.iterdir()) == []


def test_experimental_rerun_is_refused_without_unpickling(tmp_path):
    import pickle

    marker = tmp_path / "ran.txt"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (tmp_path / "config.pickle").write_bytes(pickle.dumps(Evil()))
    for args in (["--experimental-rerun", "config.pickle"], ["--experimental-rerun=config.pickle"]):
        result = shardwise("plan", *args, cwd=tmp_path)
        one_line_error(result, "plan", "--experimental-rerun unpickles its file")
    assert not marker.exists()


@pytest.mark.parametrize("where", ["model", "snapshot", "spec"])
def test_a_path_naming_an_unknown_user_is_a_name_not_a_traceback(tmp_path, where):
    """`~nosuchuser/m` stays as typed, as a shell leaves it (Path.expanduser() raised RuntimeError)."""
    from planner.errors import ShardwiseError

    name = "~shardwise_no_such_user/m"
    with pytest.raises(ShardwiseError) as caught:
        if where == "model":
            from planner.config.overrides import model_option

            model_option(name)
        elif where == "snapshot":
            from planner.hardware.snapshot import load_snapshot

            load_snapshot(name)
        else:
            from planner.model.source import spec_from_config

            spec_from_config({"path": name})
    assert "~shardwise_no_such_user" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("out", ["[a.json,b.json]", "true", "{a:1}"])
def test_plan_out_that_is_no_path_is_one_line_and_writes_nothing(tmp_path, out):
    """`out=[a.json,b.json]` wrote a file named "['a.json', 'b.json']", `out=true` one named "True"."""
    done = shardwise("plan", "model=gpt2", "hardware=cpu", "json=true", f"out={out}", cwd=tmp_path)
    one_line_error(done, "plan", "is not a file path: give out=FILE")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_path_ending_in_a_slash_is_never_written_as_a_file(tmp_path):
    """`probe.save=nd/` and `out=nd/` wrote a file named "nd": a trailing "/" means a directory."""
    from omegaconf import OmegaConf

    from planner.config.overrides import path_option
    from planner.errors import ShardwiseError
    from planner.files import write_text
    from planner.hardware.devices import Hardware
    from planner.hardware.snapshot import save_snapshot

    with pytest.raises(NotADirectoryError):
        write_text(f"{tmp_path}/nd/", "{}")
    with pytest.raises(ShardwiseError, match=r"\(Not a directory\)"):
        save_snapshot(Hardware(source="cpu"), f"{tmp_path}/nd/")
    with pytest.raises(ShardwiseError, match="names a directory that does not exist"):
        path_option(OmegaConf.create({"out": f"{tmp_path}/nd/"}), "out")
    assert list(tmp_path.iterdir()) == []
    assert path_option(OmegaConf.create({"out": f"{tmp_path}/"}), "out") == tmp_path  # an existing one is taken
