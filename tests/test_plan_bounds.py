"""Planning stays bounded (issue 10, item 2): the largest inputs planner/limits.py allows plan with a bounded
number of planning steps, and the bounded search takes the same layout as the exhaustive one where that one
finishes."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from planner.config.compose import make_plan

# The behaviour checked is the count of single planning steps (planner.sizing places one request): the
# searches above it (sessions=auto, fixes) bisect, so a few dozen steps plan the largest inputs where a
# linear walk over 65,536 sessions or 4,096 GPUs would take thousands. HANG_S only catches a hang: it is
# far above what any machine, however loaded, needs (these took 3-20 s on a loaded 2-core box).
MAX_PLACEMENTS = 64
HANG_S = 300


@pytest.fixture
def placements(monkeypatch):
    """How many times planner.sizing placed one request during the test."""
    import planner.sizing as sizing

    count = [0]
    real = sizing._place_on

    def counted(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(sizing, "_place_on", counted)
    return count


WORST = [
    ("gpt-oss-120b", "l4", ["hardware.count=16", "hardware.nodes=256"]),
    ("gpt-oss-120b", "h100_80gb", ["hardware.count=256"]),
    ("gpt-oss-120b", "h100_80gb", ["hardware.count=16", "hardware.nodes=256", "policy.objective=latency"]),
    ("gpt-oss-120b", "l4", ["hardware.count=16", "hardware.nodes=256", "policy.sessions=auto"]),
    ("gpt-oss-120b", "l4", ["hardware.count=16", "hardware.nodes=256", "policy.sessions=65536"]),
    ("gpt-oss-120b", "l4", ["hardware.count=256", "policy.objective=throughput", "policy.sessions=65536"]),
    ("auto", "l4", ["hardware.count=16", "hardware.nodes=256"]),
    ("gpt-oss-120b", "l4", ["hardware.count=16", "hardware.nodes=256", "policy.strategy=pipeline"]),
    ("llama-3.1-70b", "h100_80gb", ["hardware.count=16", "hardware.nodes=256", "policy.strategy=tensor_parallel"]),
    ("llama-3.1-70b", "t4", ["hardware.count=1", "hardware.nodes=256", "policy.objective=latency"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("model,hardware,overrides", WORST)
def test_the_largest_machines_plan_in_a_bounded_number_of_steps(model, hardware, overrides, placements):
    start = time.perf_counter()
    plan = make_plan(model, hardware, overrides)
    elapsed = time.perf_counter() - start
    assert 1 <= placements[0] <= MAX_PLACEMENTS, f"{model} on {hardware} {overrides}: {placements[0]} placements"
    assert elapsed < HANG_S, f"{model} on {hardware} {overrides}: {elapsed:.1f} s (a hang)"
    assert plan.budget  # a real plan came out, fitting or not


def _exhaustive(monkeypatch):
    """Switch every bound of the search off: every pipeline size, every cross-node shape, every layout weighed."""
    from planner import objective, search
    from planner.memory import CostModel

    monkeypatch.setattr(search, "ALWAYS_STAGES", 10**6)
    monkeypatch.setattr(search, "LINEAR_RUN", 10**6)  # every layout of a run tried one by one, no bisection
    monkeypatch.setattr(search, "_identical", lambda by_node: False)
    monkeypatch.setattr(objective, "PER_FAMILY", 10**6)
    monkeypatch.setattr(CostModel, "least_gpu_bytes", lambda self, context, gpus: (0, 0))


def _layout(plan) -> dict:
    return {
        "strategy": plan.strategy,
        "nodes": plan.nodes,
        "tp": plan.tp_size,
        "pp": plan.pp_size,
        "budget": [replace(b) for b in plan.budget],
        "limits": plan.limits,
        "performance": plan.performance,
        "fallbacks": plan.fallbacks,
        "serving": plan.serving,
    }


SMALL_CLUSTERS = [
    ("gpt-oss-120b", "l4", ["hardware.count=16", "hardware.nodes=2"]),
    ("gpt-oss-120b", "l4", ["hardware.count=2", "hardware.nodes=8"]),
    # the most context for 64 sessions takes 28 GPUs for 24 layers: four of them hold nothing
    (
        "gpt-oss-20b",
        "l4",
        ["hardware.count=8", "hardware.nodes=4", "policy.objective=throughput", "policy.sessions=64"],
    ),
    ("llama-3.1-70b", "a100_40gb", ["hardware.count=8", "hardware.nodes=2", "policy.objective=latency"]),
    ("llama-3.1-70b", "t4", ["hardware.count=4", "hardware.nodes=8"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("model,hardware,overrides", SMALL_CLUSTERS)
def test_the_bounded_search_takes_the_layout_the_exhaustive_one_takes(model, hardware, overrides, monkeypatch):
    bounded = make_plan(model, hardware, overrides)
    with monkeypatch.context() as patch:
        _exhaustive(patch)
        exhaustive = make_plan(model, hardware, overrides)
    assert _layout(bounded) == _layout(exhaustive)
    assert [d.what for d in bounded.decisions] == [d.what for d in exhaustive.decisions]


@pytest.mark.slow
@pytest.mark.parametrize("model,hardware,overrides", SMALL_CLUSTERS)
def test_bisecting_every_run_of_layouts_takes_the_layout_trying_them_one_by_one_takes(
    model, hardware, overrides, monkeypatch
):
    """search.first_fit bisects runs longer than LINEAR_RUN (machines claiming thousands of GPUs); with every
    run bisected, real clusters still get the layout, context and chunk of the one-by-one search."""
    from planner import search

    with monkeypatch.context() as patch:
        patch.setattr(search, "LINEAR_RUN", 1)
        bisected = make_plan(model, hardware, overrides)
    with monkeypatch.context() as patch:
        _exhaustive(patch)
        one_by_one = make_plan(model, hardware, overrides)
    assert _layout(bisected) == _layout(one_by_one)


def test_pipeline_shapes_are_bounded_by_the_model_not_by_the_gpus_claimed():
    from planner.config.compose import compose
    from planner.config.request import request_from_config
    from planner.hardware.tiers import resolve_hardware
    from planner.memory import CostModel
    from planner.model.inventory import build_inventory
    from planner.plan import Notes
    from planner.search import attempts, most_stages

    cfg = compose("plan", ["model=gpt-oss-120b", "hardware=l4", "hardware.count=16", "hardware.nodes=256"])
    hw = resolve_hardware(cfg.hardware, name="l4")
    request = request_from_config(cfg)
    inv = build_inventory(request.model.architecture, dtype="bfloat16")
    cost = CostModel(inv, "bfloat16", "bfloat16", "eager", 1, request.policy.overhead)
    tried = attempts(inv, cost, hw, request.policy, Notes())
    assert len(hw.devices) == 4096
    assert max(a.gpus for a in tried) <= most_stages(inv) < 4096
    # on identical nodes, a GPU count is tried as the fewest and the most nodes only
    across = [a for a in tried if a.nodes > 1]
    counts = [a.gpus for a in across]
    assert all(counts.count(c) <= 2 for c in set(counts))
    assert len(across) <= 2 * most_stages(inv)


def test_the_memory_floor_only_skips_layouts_that_do_not_fit():
    """least_gpu_bytes is a necessary condition: wherever it says no, laying the model out says no too."""
    from planner.config.compose import compose
    from planner.config.request import request_from_config
    from planner.hardware.tiers import resolve_hardware
    from planner.memory import CostModel
    from planner.model.inventory import build_inventory
    from planner.placement import evaluate
    from planner.plan import Notes
    from planner.search import attempts

    cfg = compose("plan", ["model=gpt-oss-120b", "hardware=l4", "hardware.count=8", "hardware.nodes=2"])
    hw = resolve_hardware(cfg.hardware, name="l4")
    request = request_from_config(cfg)
    inv = build_inventory(request.model.architecture, dtype="bfloat16")
    skipped = laid_out = 0
    for sessions in (1, 4, 16):
        cost = CostModel(inv, "bfloat16", "bfloat16", "eager", sessions, request.policy.overhead)
        for attempt in attempts(inv, cost, hw, request.policy, Notes()):
            if attempt.room is None:
                continue
            for context in (4096, 32768, 131072):
                together, one = cost.least_gpu_bytes(context, attempt.gpus)
                slots = attempt.build(context, 512)
                fits = all(p.fits for p in evaluate(slots, cost, context, 512))
                laid_out += 1
                if attempt.room[0] < together or attempt.room[1] < one:
                    skipped += 1
                    assert not fits, (attempt.gpus, attempt.nodes, context, sessions)
                planned = sum(p.planned for p in evaluate(slots, cost, context, 512))
                assert planned >= together  # the floor is below what any layout plans
    assert 0 < skipped < laid_out


def test_the_objective_weighs_layouts_by_the_same_decode_rates_the_plan_reports():
    from planner.config.compose import make_plan

    plan = make_plan("gpt-oss-120b", "l4", ["hardware.count=16", "hardware.nodes=2", "policy.objective=latency"])
    said = next(d.reason for d in plan.decisions if d.what == "objective")
    rate = plan.performance["decode_tokens_per_s"]
    assert plan.strategy == "pipeline" and said.startswith(
        f"pipeline over {plan.pp_size} GPUs: {rate:.1f} tok/s per sequence"
    )


# --- DOES NOT FIT says what was tried, and ends with a fix or that nothing here would fit ----------------


def _report(plan) -> str:
    import io

    from rich.console import Console

    from planner.report import render

    out = io.StringIO()
    render(plan, console=Console(file=out, width=400))
    return out.getvalue()


def test_a_misfit_names_the_layout_tried_on_all_gpus_and_what_they_needed_together():
    from planner.units import GIB

    plan = make_plan("gpt-oss-120b", "t4", ["hardware.count=4"])
    assert not plan.fits and plan.strategy == "pipeline" and len(plan.budget) == 4
    needed = sum(b.planned for b in plan.budget) / GIB
    usable = sum(b.usable for b in plan.budget) / GIB
    text = _report(plan)
    assert f"DOES NOT FIT: tried pipeline over 4 GPUs (all 4 GPUs): needs {needed:.2f} GiB, has {usable:.2f}" in text
    assert "would fit with: more GPUs: hardware.count=" in text
    strategy = next(d for d in plan.decisions if d.what == "strategy")
    assert strategy.value == "pipeline over 4 GPUs" and "largest layout tried" in strategy.reason


def test_a_misfit_on_a_huge_cluster_says_how_few_of_its_gpus_a_pipeline_can_use():
    plan = make_plan("gpt-oss-120b", "l4", ["hardware.count=16", "hardware.nodes=256", "policy.sessions=65536"])
    layers = plan.model.num_layers
    assert not plan.fits and plan.strategy == "pipeline" and plan.pp_size < 4096
    assert f"({plan.pp_size} of 4096 GPUs)" in plan.binding["tried"]
    assert f"{layers} layers fill at most {plan.pp_size} stages" in plan.binding["tried"]
    assert plan.binding["fixes"]  # fewer sessions would fit


def test_more_nodes_is_offered_for_a_cluster_and_the_fix_fits():
    plan = make_plan("gpt-oss-120b", "l4", ["hardware.count=1", "hardware.nodes=2"])
    assert not plan.fits
    (fix,) = [f for f in plan.binding["fixes"] if f["text"].startswith("more nodes")]
    (nodes,) = fix["overrides"]
    fixed = make_plan("gpt-oss-120b", "l4", ["hardware.count=1", nodes])
    fewer = int(nodes.split("=")[1]) - 1
    assert fixed.fits and not make_plan("gpt-oss-120b", "l4", ["hardware.count=1", f"hardware.nodes={fewer}"]).fits


def test_every_misfit_after_a_sweep_table_ends_with_a_fix_or_nothing_here_would_fit():
    from planner.config.sweep import misfit_lines

    with_fix = make_plan("gpt-oss-120b", "t4", ["hardware.count=4"])
    without = make_plan("gpt-oss-120b", "a100_40gb")
    lines = misfit_lines(
        [
            ("gpt-oss-120b", "t4 (4 GPU)", with_fix.binding),
            ("gpt-oss-120b", "a100_40gb (1 GPU)", {**without.binding, "fixes": []}),
        ]
    )
    assert lines[0].startswith("gpt-oss-120b on t4 (4 GPU) DOES NOT FIT (tried pipeline over 4 GPUs (all 4 GPUs))")
    assert f"would fit with: {with_fix.binding['fixes'][0]['text']}" in lines[0]
    assert lines[1].endswith("nothing here would fit: choose a smaller model (model=auto) or other hardware")
