"""Fuzzing (issue 10 acceptance): hostile overrides, config.json, safetensors headers, snapshots and plan files
give a plan or one ShardwiseError (CLI: exit 0 or 2), never another exception, a traceback or a hang.

Bounded: derandomized hypothesis runs with a fixed number of examples each (well under a minute in all).
"""

from __future__ import annotations

import json
import math
import struct
import time

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tiny_models import TINY_LLAMA_CONFIG

from planner.errors import ShardwiseError

FUZZ = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found, in bounded time
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SLOW_PLAN_S = 300  # a hang guard only: far above any plan on any machine, however loaded (seconds here)

hostile_numbers = st.sampled_from(
    [0, -1, 1, 2, 3, 7, 10**9, 2**63, -(2**63), 10**400, math.nan, math.inf, -math.inf, 0.5, -0.0, 1e308]
)
scalars = st.one_of(
    hostile_numbers,
    st.integers(min_value=-(10**12), max_value=10**12),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)

LLAMA = TINY_LLAMA_CONFIG


def _timed(call):
    start = time.perf_counter()
    try:
        return call()
    finally:
        assert time.perf_counter() - start < SLOW_PLAN_S


@pytest.mark.slow
@FUZZ
@given(
    changes=st.dictionaries(
        st.sampled_from(
            sorted(LLAMA) + ["head_dim", "sliding_window", "rope_scaling", "layer_types", "tie_word_embeddings"]
        ),
        values,
        min_size=1,
        max_size=3,
    )
)
def test_hostile_config_json_plans_or_refuses(tmp_path_factory, changes):
    from planner.config.compose import make_plan

    model = tmp_path_factory.mktemp("m")
    (model / "config.json").write_text(json.dumps({**LLAMA, **changes}, allow_nan=True))
    try:
        plan = _timed(lambda: make_plan("gpt2", "t4", model_path=str(model)))
    except ShardwiseError:
        return
    assert plan.model.params_total > 0 and all(b.planned >= 0 for b in plan.budget)


entries = st.one_of(
    values,
    st.fixed_dictionaries(
        {"dtype": st.one_of(st.sampled_from(["F32", "BF16", "F16"]), scalars), "shape": values, "data_offsets": values}
    ),
)


@FUZZ
@given(
    header=st.one_of(values, st.dictionaries(st.text(max_size=8), entries, max_size=4)), data_bytes=st.integers(0, 64)
)
def test_hostile_safetensors_headers_are_read_or_refused(tmp_path_factory, header, data_bytes):
    from planner.model.headers import read_index

    where = tmp_path_factory.mktemp("st")
    raw = json.dumps(header, allow_nan=True).encode()
    (where / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * data_bytes)
    try:
        index = read_index(str(where))
    except ShardwiseError:
        return
    assert all(0 <= t.nbytes <= data_bytes for t in index.tensors)


DEVICE = {
    "id": 0,
    "name": "NVIDIA H100",
    "total_bytes": 85899345920,
    "free_bytes": 84000000000,
    "compute_capability": "9.0",
}
SNAPSHOT = {"snapshot_version": 1, "devices": [DEVICE], "host_ram_bytes": 1 << 36}


@FUZZ
@given(
    top=st.dictionaries(
        st.sampled_from(["devices", "host_ram_bytes", "nodes", "interconnect", "nvlink_pairs", "cpu_count", "notes"]),
        values,
        max_size=2,
    ),
    device=st.dictionaries(st.sampled_from(sorted(DEVICE) + ["node", "uuid", "processes"]), values, max_size=2),
)
def test_hostile_snapshots_load_or_refuse(tmp_path_factory, top, device):
    from planner.hardware.snapshot import load_snapshot

    path = tmp_path_factory.mktemp("snap") / "box.json"
    path.write_text(json.dumps({**SNAPSHOT, "devices": [{**DEVICE, **device}], **top}, allow_nan=True))
    try:
        _timed(lambda: load_snapshot(path))
    except ShardwiseError:
        return


@pytest.fixture(scope="module")
def plan_dict():
    from planner.config.compose import make_plan

    return make_plan("gpt2", "t4").to_dict()


@FUZZ
@given(
    path=st.lists(
        st.sampled_from(
            [
                "model",
                "hardware",
                "limits",
                "device_map",
                "budget",
                "launch",
                "decisions",
                "max_memory",
                "fits",
                "context_tokens",
                "dtype",
                "source",
                "devices",
                "0",
            ]
        ),
        min_size=1,
        max_size=3,
    ),
    value=values,
)
def test_hostile_plan_files_load_or_refuse(tmp_path_factory, plan_dict, path, value):
    import copy

    from planner.plan import Plan

    data = copy.deepcopy(plan_dict)
    node = data
    for key in path[:-1]:
        if isinstance(node, dict) and isinstance(node.get(key), dict):
            node = node[key]
    if isinstance(node, dict):
        node[path[-1]] = value
    file = tmp_path_factory.mktemp("plan") / "plan.json"
    file.write_text(json.dumps(data, allow_nan=True))
    try:
        plan = Plan.load(file)
    except ShardwiseError:
        return
    plan.to_json()  # a loaded plan serializes again


OVERRIDE_KEYS = [
    "hardware.count",
    "hardware.nodes",
    "hardware.memory_mib",
    "hardware.host_ram_gib",
    "hardware.compute_capability",
    "policy.sessions",
    "policy.context_tokens",
    "policy.headroom_fraction",
    "policy.headroom_mib",
    "policy.overhead.cuda_context_mib",
    "policy.overhead.fragmentation_fraction",
    "policy.offload_disk_gib",
    "policy.prefill_chunk_tokens",
    "policy.min_context_tokens",
    "generation.max_tokens",
    "out",
    "json",
    "+extra",
]
override_values = st.sampled_from(
    [
        "0",
        "-1",
        "1",
        "3",
        "nan",
        "inf",
        "-inf",
        "1e400",
        "99999999999999999999",
        "lots",
        "''",
        "[1]",
        "{a: 1}",
        "${oc.env:SHARDWISE_FUZZ_UNSET}",
        "null",
        "true",
        "8.5",
        "9" * 50,
    ]
)


@pytest.mark.slow
@settings(max_examples=20, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate])
@given(overrides=st.lists(st.tuples(st.sampled_from(OVERRIDE_KEYS), override_values), min_size=1, max_size=3))
def test_hostile_overrides_exit_0_or_2_without_a_traceback(tmp_path_factory, overrides):
    import contextlib
    import io
    import os

    from runner.cli import main

    cwd = tmp_path_factory.mktemp("cli")
    args = ["plan", "model=gpt2", "hardware=t4", *(f"{k}={v}" for k, v in overrides)]
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    os.chdir(cwd)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
                code = 0
            except SystemExit as exc:
                code = exc.code
    finally:
        os.chdir(here)
    assert time.perf_counter() - start < SLOW_PLAN_S, args
    assert code in (0, None, 2), (args, err.getvalue()[-2000:])
    assert "Traceback" not in err.getvalue() + out.getvalue(), args
    if code == 2:
        assert err.getvalue().strip().splitlines()[-1].startswith("shardwise plan: error: "), err.getvalue()
