"""The plan's serving block: paged-cache sizes match transformers' own memory handler, and layouts that cannot
batch say why."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from tiny_models import tiny_gpt_oss, tiny_llama

from planner.memory.serving import geometry, paged_footprint, plan_serving, sectors_needed
from planner.model.inventory import build_inventory
from planner.planfile.plan import Plan


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving-models")
    return {"llama": tiny_llama(root), "gpt_oss": tiny_gpt_oss(root)}


def _inventory(model_dir, dtype="float32"):
    return build_inventory(json.loads((model_dir / "config.json").read_text()), dtype=dtype)


def _transformers_cache(model_dir, serving, dtype):
    """transformers' PagedAttentionCache built on the meta device with the plan's settings."""
    import torch
    from transformers import AutoConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig
    from transformers.generation.continuous_batching import cache as cb_cache
    from transformers.generation.continuous_batching.distributed import DistributedHelper

    config = AutoConfig.from_pretrained(model_dir)
    config._attn_implementation = serving.attn_implementation
    cb = ContinuousBatchingConfig(
        page_size=serving.page_size_tokens,
        num_blocks=serving.num_blocks,
        max_batch_tokens=serving.max_batch_tokens,
        max_requests_per_batch=serving.max_concurrent,
        max_blocks_per_request=0,
        use_async_batching=False,
        max_memory_percent=1.0,
    )
    # The handler checks the footprint against free memory: give it plenty, on the meta device nothing is allocated.
    original = cb_cache.PagedAttentionMemoryHandler.get_available_memory
    cb_cache.PagedAttentionMemoryHandler.get_available_memory = lambda self: 1 << 50
    try:
        cache = cb_cache.PagedAttentionCache(
            config=config,
            continuous_batching_config=cb,
            device=torch.device("meta"),
            distributed_helper=DistributedHelper(None, None),
            dtype=dtype,
            model_supports_logits_to_keep=True,
        )
        handler = cb_cache.PagedAttentionMemoryHandler(
            config=config,
            cb_config=cb,
            dtype=dtype,
            bytes_per_sector=cache.bytes_per_sector,
            tokens_per_sector=cache.tokens_per_sector,
            bytes_per_block=config.num_hidden_layers
            * cb_cache.FullAttentionCacheAllocator.get_bytes_per_page(
                cb_cache.find_num_key_value_heads(config), cb_cache.find_head_dim(config), dtype, cb.page_size
            ),
            attn_types=list(cache.cache_allocators),
            model_supports_logits_to_keep=True,
        )
        footprint = handler.compute_memory_footprint(cache.max_batch_tokens, cache.num_sectors)
    finally:
        cb_cache.PagedAttentionMemoryHandler.get_available_memory = original
    return cache, footprint


@pytest.mark.parametrize("name", ["llama", "gpt_oss"])
@pytest.mark.parametrize("context,sessions", [(256, 1), (200, 8), (64, 16)])
def test_paged_cache_sizes_match_transformers(models, name, context, sessions):
    """Sectors, cache bytes and footprint are transformers' own numbers for the same settings."""
    import torch

    inv = _inventory(models[name])
    serving = plan_serving(
        inv, dtype_bytes=4, attn="sdpa", strategy="cpu", context=context, sessions=sessions, on_gpu=False
    )
    assert serving.mode == "batched"
    cache, footprint = _transformers_cache(models[name], serving, torch.float32)
    geo = geometry(inv, 4, serving.page_size_tokens)
    assert geo.bytes_per_sector == cache.bytes_per_sector
    assert geo.tokens_per_sector == cache.tokens_per_sector
    assert serving.cache_bytes == cache.cache_tensor.numel()
    assert serving.footprint_bytes == footprint
    assert cache.num_blocks >= serving.num_blocks


@pytest.mark.parametrize("name", ["llama", "gpt_oss"])
def test_paged_cache_holds_every_planned_sequence_at_full_context(models, name):
    """transformers' allocators can store `sessions` sequences of `context` tokens at once in the planned cache."""
    import torch
    from transformers.generation.continuous_batching.requests import RequestState

    inv = _inventory(models[name])
    context, sessions = 200, 5
    serving = plan_serving(
        inv, dtype_bytes=4, attn="sdpa", strategy="cpu", context=context, sessions=sessions, on_gpu=False
    )
    cache, _ = _transformers_cache(models[name], serving, torch.float32)
    states = [RequestState(request_id=f"r{i}", initial_tokens=[0] * context) for i in range(sessions)]
    assert all(cache.can_store_request_tokens(state, context) for state in states)
    one_more = RequestState(request_id="extra", initial_tokens=[0] * context)
    assert sectors_needed(inv, geometry(inv, 4, serving.page_size_tokens), context, sessions + 1) > cache.num_sectors
    assert not cache.can_store_request_tokens(one_more, context)


def test_sliding_layers_stop_at_the_window(models):
    """gpt-oss's sliding layers (window 8) need one page per sequence however long the context is."""
    inv = _inventory(models["gpt_oss"])
    geo = geometry(inv, 4, 64)
    assert sectors_needed(inv, geo, 256, 4) < sectors_needed(
        replace(inv, layers=tuple(replace(layer, attention="full", window=None) for layer in inv.layers)), geo, 256, 4
    )


@pytest.mark.parametrize(
    "strategy,attn,word",
    [
        ("offload", "sdpa", "offloaded"),
        ("pipeline", "sdpa", "several GPUs"),
        ("tensor_parallel", "sdpa", "rank"),
        ("cpu", "eager", "eager"),
    ],
)
def test_layouts_that_cannot_batch_say_why(models, strategy, attn, word):
    inv = _inventory(models["llama"])
    serving = plan_serving(inv, dtype_bytes=4, attn=attn, strategy=strategy, context=128, sessions=4, on_gpu=True)
    assert serving.mode == "sequential"
    assert word in serving.reason
    assert serving.num_blocks == 0


def test_flash_on_gpu_uses_256_token_pages_and_no_masks(models):
    inv = _inventory(models["llama"], dtype="bfloat16")
    sdpa = plan_serving(inv, dtype_bytes=2, attn="sdpa", strategy="single_gpu", context=256, sessions=4, on_gpu=True)
    flash = plan_serving(
        inv, dtype_bytes=2, attn="flash_attention_2", strategy="single_gpu", context=256, sessions=4, on_gpu=True
    )
    assert (sdpa.page_size_tokens, flash.page_size_tokens) == (64, 256)
    geo = geometry(inv, 2, 256)
    with_masks = paged_footprint(
        inv, geo, dtype_bytes=2, num_sectors=4, max_batch_tokens=256, max_requests_per_batch=4, flash=False
    )
    without = paged_footprint(
        inv, geo, dtype_bytes=2, num_sectors=4, max_batch_tokens=256, max_requests_per_batch=4, flash=True
    )
    assert with_masks > without


def test_plan_json_round_trips_the_serving_block(models, tmp_path):
    from planner.config.compose import make_plan

    plan = make_plan(model_path=str(models["llama"]), hardware="cpu", overrides=["policy.sessions=3"])
    assert plan.serving.mode == "batched"
    assert plan.serving.max_concurrent == 3
    assert any(d.what == "serving" for d in plan.decisions)
    loaded = Plan.load(plan.save(tmp_path / "plan.json"))
    assert loaded.serving == plan.serving
    old = plan.to_dict()
    del old["serving"]
    assert Plan.from_dict(old).serving is None


def test_auto_sessions_is_the_most_that_fit_at_the_context():
    """policy.sessions=auto: n fits with batching's buffers, n + 1 does not, and the decision names what binds."""
    from planner.config.compose import make_plan
    from planner.driver.sessions import serving_fits

    plan = make_plan(
        model="llama-3.2-1b", hardware="t4", overrides=["policy.sessions=auto", "policy.context_tokens=8192"]
    )
    n = plan.limits.sessions
    assert 1 < n < 256
    assert plan.limits.context_tokens == 8192
    assert plan.serving.max_concurrent == n
    reason = next(d.reason for d in plan.decisions if d.what == "sessions")
    assert "policy.sessions=auto" in reason and f"{n + 1} would overflow" in reason and "bind" in reason
    same = make_plan(
        model="llama-3.2-1b", hardware="t4", overrides=[f"policy.sessions={n}", "policy.context_tokens=8192"]
    )
    assert same.fits and serving_fits(same)
    more = make_plan(
        model="llama-3.2-1b", hardware="t4", overrides=[f"policy.sessions={n + 1}", "policy.context_tokens=8192"]
    )
    assert not (more.fits and serving_fits(more))


@pytest.mark.parametrize("value,message", [("0", "must be >= 1"), ("many", "bad value for policy.sessions")])
def test_bad_sessions_value_is_one_clear_error(value, message):
    from planner.config.compose import make_plan
    from planner.errors import ShardwiseError

    with pytest.raises(ShardwiseError, match=message):
        make_plan(model="gpt2", hardware="cpu", overrides=[f"policy.sessions={value}"])


def test_auto_sessions_stops_at_max_sessions_and_keeps_the_context(models):
    """A tiny model fits far more sequences than it needs: auto stops at the bound, and the context stays that of
    one session (16 on the CPU by default, policy.max_sessions=N otherwise)."""
    from planner.config.compose import make_plan
    from planner.driver.sessions import MAX_SESSIONS_CPU

    path = str(models["llama"])
    one = make_plan(model_path=path, hardware="cpu")
    auto = make_plan(model_path=path, hardware="cpu", overrides=["policy.sessions=auto"])
    assert one.limits.sessions == 1
    assert auto.limits.sessions == auto.serving.max_concurrent == MAX_SESSIONS_CPU
    assert auto.limits.context_tokens == one.limits.context_tokens
    reason = next(d.reason for d in auto.decisions if d.what == "sessions")
    assert f"{MAX_SESSIONS_CPU} sequence(s) of {one.limits.context_tokens:,} tokens" in reason
    assert "bounded by policy.max_sessions=auto" in reason and "memory allows more" in reason
    five = make_plan(model_path=path, hardware="cpu", overrides=["policy.sessions=auto", "policy.max_sessions=5"])
    assert five.limits.sessions == five.serving.max_concurrent == 5
    assert "bounded by policy.max_sessions=5" in next(d.reason for d in five.decisions if d.what == "sessions")


def test_a_bound_that_memory_meets_exactly_does_not_claim_memory_allows_more():
    from planner.config.compose import make_plan

    free = make_plan(model="llama-3.1-8b", hardware="h100_80gb", overrides=["policy.sessions=auto"])
    fits = free.limits.sessions
    assert 1 < fits < 64  # memory binds before the default bound
    exact = make_plan(
        model="llama-3.1-8b", hardware="h100_80gb", overrides=["policy.sessions=auto", f"policy.max_sessions={fits}"]
    )
    assert exact.limits.sessions == fits
    reason = next(d.reason for d in exact.decisions if d.what == "sessions")
    assert "memory allows no more either" in reason and "memory allows more" not in reason


def test_auto_sessions_on_gpus_is_bounded_at_64():
    from planner.config.compose import make_plan
    from planner.driver.sessions import MAX_SESSIONS_GPU

    plan = make_plan(
        model="llama-3.2-1b", hardware="h100_80gb", overrides=["policy.sessions=auto", "policy.context_tokens=8192"]
    )
    assert plan.limits.sessions == plan.serving.max_concurrent == MAX_SESSIONS_GPU == 64
    assert plan.limits.context_tokens == 8192


def test_auto_sessions_sizes_what_fits_even_where_this_runner_serves_sequentially():
    """vLLM batches tensor-parallel and pipeline layouts, so `plan policy.sessions=auto` sizes the sessions that
    fit there too; only `shardwise serve` plans one for such a layout (test_server_cli)."""
    from planner.config.compose import make_plan

    plan = make_plan(
        model="llama-3.1-70b",
        hardware="h100_80gb",
        overrides=["hardware.count=4", "policy.strategy=tensor_parallel", "policy.sessions=auto"],
    )
    assert plan.strategy == "tensor_parallel" and plan.serving.mode == "sequential"
    assert plan.limits.sessions > 1
    assert next(d.reason for d in plan.decisions if d.what == "sessions").startswith(
        f"policy.sessions=auto: {plan.limits.sessions} sequence(s)"
    )


@pytest.mark.parametrize("value,message", [("0", "must be >= 1"), ("lots", "bad value for policy.max_sessions")])
def test_bad_max_sessions_value_is_one_clear_error(value, message):
    from planner.config.compose import make_plan
    from planner.errors import ShardwiseError

    with pytest.raises(ShardwiseError, match=message):
        make_plan(model="gpt2", hardware="cpu", overrides=["policy.sessions=auto", f"policy.max_sessions={value}"])
