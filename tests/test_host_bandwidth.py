"""Host memory bandwidth for CPU plans: one thread's and all cores' copy, and what a run with T threads streams."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from planner.hardware.devices import Hardware


def host(one: float, every: float, cpus: int) -> Hardware:
    return Hardware(
        source="probe",
        host_ram_bytes=32 * 2**30,
        cpu_count=cpus,
        interconnect="none",
        host_memory_bandwidth_gb_per_s=one,
        host_memory_bandwidth_all_cores_gb_per_s=every,
        host_fp32_tflops=0.2,
        host_bf16_tflops=0.2,
    )


def test_threads_stream_at_the_smaller_of_their_sum_and_the_all_core_copy():
    """10 GB/s per thread, 25 GB/s with every core: 1 thread 10, 2 threads 20, 3 and more capped at 25."""
    box = host(10.0, 25.0, cpus=16)
    assert [box.host_bandwidth_gb_per_s(t) for t in (1, 2, 3, 16)] == [10.0, 20.0, 25.0, 25.0]
    assert box.host_bandwidth_gb_per_s() == 25.0  # 0 threads: the plan's CPUs


def test_an_unknown_all_core_copy_keeps_one_threads_bandwidth():
    """Old snapshots and given bandwidths have no all-core figure: plans stream at one thread's, as before."""
    box = host(20.0, 0.0, cpus=4)
    assert [box.host_bandwidth_gb_per_s(t) for t in (1, 4, 64)] == [20.0, 20.0, 20.0]


@given(
    one=st.floats(0.1, 500.0),
    every=st.floats(0.0, 5000.0),
    threads=st.integers(1, 512),
    more=st.integers(1, 512),
)
def test_more_threads_never_stream_slower_and_never_past_the_all_core_copy(one, every, threads, more):
    box = host(one, every, cpus=8)
    fewer, many = box.host_bandwidth_gb_per_s(threads), box.host_bandwidth_gb_per_s(threads + more)
    assert many >= fewer
    assert many <= max(every, one)
    assert fewer >= one  # never below one thread's: one of them alone reaches it


def cpu_plan(*overrides: str):
    from planner.config.compose import make_plan

    neutral = [
        f"policy.performance.cpu.{key}={value}"
        for key, value in (
            ("bandwidth_efficiency", 1),
            ("compute_efficiency", 1),
            ("layer_overhead_us", 0),
            ("step_overhead_ms", 0),
        )
    ]
    return make_plan(
        "gpt2",
        "cpu",
        [
            "hardware.host_ram_gib=32",
            "hardware.memory_bandwidth_gb_per_s=10",
            "hardware.fp32_tflops=10",
            "policy.dtype=float32",
            "policy.context_tokens=1",
            "policy.min_context_tokens=1",
            "policy.performance.prompt_tokens=1",
            *neutral,
            *overrides,
        ],
    )


@pytest.mark.parametrize("cpus, all_cores, gb_per_s", [(1, 25, 10), (2, 25, 20), (4, 25, 25), (4, 0, 10)])
def test_a_cpu_plan_decodes_at_the_bandwidth_its_threads_reach(cpus, all_cores, gb_per_s):
    """gpt2 fp32, one token of context, neutral factors: a step reads its weights (less the wpe lookup) at
    min(cpus x 10 GB/s, all cores' copy) and compute (10 TFLOPs) does not bind."""
    plan = cpu_plan(f"hardware.cpu_count={cpus}", f"hardware.all_core_bandwidth_gb_per_s={all_cores}")
    read = plan.model.weight_bytes - 1024 * 768 * 4 + 2 * plan.limits.kv_bytes_per_token
    assert plan.performance["decode_tokens_per_s"] == pytest.approx(gb_per_s * 1e9 / read, rel=1e-4)
    assert plan.hardware["host_memory_bandwidth_all_cores_gb_per_s"] == all_cores


def test_a_negative_all_core_bandwidth_is_a_one_line_error():
    from planner.errors import ShardwiseError

    with pytest.raises(ShardwiseError, match=r"^hardware.all_core_bandwidth_gb_per_s must be >= 0"):
        cpu_plan("hardware.all_core_bandwidth_gb_per_s=-5")


def test_the_probe_measures_one_thread_and_every_thread_and_says_both():
    """A real measurement on this machine: both figures positive, the all-core one never below one thread's."""
    from planner.hardware.host import host_speed, usable_cpu_count

    host_speed.cache_clear()
    speed = host_speed()
    assert speed.memory_bandwidth_gb_per_s > 0
    assert speed.all_core_bandwidth_gb_per_s >= speed.memory_bandwidth_gb_per_s
    assert speed.all_core_threads == usable_cpu_count()
    assert f"{speed.memory_bandwidth_gb_per_s:.1f} GB/s memory copy by one thread" in speed.note
    assert f"{speed.all_core_bandwidth_gb_per_s:.1f} GB/s by all" in speed.note


def test_the_all_thread_copy_counts_every_threads_bytes():
    """Two threads copy 2 x 64 MiB each round (read + write): the rate is those bytes over the round's span."""
    import numpy as np

    from planner.hardware.host import all_thread_copy_gb_per_s

    rate = all_thread_copy_gb_per_s(np, 2, repeats=2)
    assert 0.1 < rate < 10_000  # GB/s: a real memory system, not bytes miscounted by 1e3 either way


def test_a_snapshot_records_both_bandwidths_and_an_old_one_loads_without_the_all_core_figure(tmp_path):
    import json

    from planner.hardware.snapshot import load_snapshot, save_snapshot

    path = save_snapshot(host(12.0, 30.0, cpus=4), tmp_path / "box.json")
    data = json.loads(path.read_text())
    assert (data["host_memory_bandwidth_gb_per_s"], data["host_memory_bandwidth_all_cores_gb_per_s"]) == (12.0, 30.0)
    assert load_snapshot(path).host_bandwidth_gb_per_s() == 30.0
    del data["host_memory_bandwidth_all_cores_gb_per_s"]  # written before this field existed
    path.write_text(json.dumps(data))
    assert load_snapshot(path).host_bandwidth_gb_per_s() == 12.0


def test_a_copy_thread_that_cannot_allocate_fails_the_measurement_without_hanging_the_others():
    """One thread's buffer allocation fails: the others are released from the barrier and the caller is told."""
    import threading
    import types

    import numpy as np

    from planner.hardware.host import all_thread_copy_gb_per_s

    calls, lock = [], threading.Lock()

    def ones(n):
        with lock:
            calls.append(n)
            if len(calls) == 2:
                raise MemoryError
        return np.ones(n)

    fake = types.SimpleNamespace(ones=ones, empty_like=np.empty_like, copyto=np.copyto)
    with pytest.raises(RuntimeError, match="a copy thread failed"):
        all_thread_copy_gb_per_s(fake, 3, repeats=2)
