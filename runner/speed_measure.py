"""Measured speed against the plan's prediction: the library behind `shardwise calibrate` and
benchmarks/speed_prediction.py.

Random-weight Llama-style models of given shapes are built on the device a plan here would use (the
first GPU, else the CPU) in the dtype the planner decides, each runs greedy `model.generate`
(`runs` times, median), and the planner predicts each with neutral factors (efficiency 1, no fixed
costs); planner.speed.calibration.fit_factors turns the pairs into `policy.performance` factors for that
kind of stage (gpu, cpu or cpu_half).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

from planner.errors import ShardwiseError

VOCAB = 32000
NEUTRAL = {"bandwidth_efficiency": 1.0, "compute_efficiency": 1.0, "layer_overhead_us": 0.0, "step_overhead_ms": 0.0}


def llama_config(shape, max_positions: int = 2048):
    """A LlamaConfig from (hidden, layers, intermediate, heads, kv heads)."""
    from transformers import LlamaConfig

    hidden, layers, inter, heads, kv = shape
    return LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        vocab_size=VOCAB,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )


def build(config, dtype_name: str, device: str = "cpu"):
    """The model for `config` with seeded uniform random weights, in `dtype_name`, on `device`."""
    import torch
    from transformers import LlamaForCausalLM

    dtype = getattr(torch, dtype_name)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.uniform_(-0.05, 0.05, generator=generator)
        for module in model.modules():  # buffers (rotary inv_freq) were left empty by to_empty
            if hasattr(module, "inv_freq"):
                module.__init__(config)
                module.to(device)
    model.generation_config.eos_token_id = None
    return model.eval()


class Stamps:
    """A generate streamer that stamps each generated token (the first put() is the prompt)."""

    def __init__(self, clock):
        self.clock = clock
        self.times = []
        self.prompt_seen = False

    def put(self, value):
        value.tolist()  # waits for the device, so the stamp is when the token exists
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.times.append(self.clock())

    def end(self):
        pass


def measure(model, prompt_tokens: int, new_tokens: int, runs: int, clock=time.perf_counter) -> tuple[float, float]:
    """Median (time to first token, decode tokens/s) over `runs` greedy generations, timed by `clock`."""
    import torch

    ids = torch.randint(0, VOCAB, (1, prompt_tokens), generator=torch.Generator().manual_seed(1)).to(model.device)
    ttfts, rates = [], []
    with torch.no_grad():
        model.generate(ids[:, :8], max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
        for _ in range(runs):
            stamps = Stamps(clock)
            start = clock()
            model.generate(
                ids,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
                streamer=stamps,
            )
            ttfts.append(stamps.times[0] - start)
            rates.append((len(stamps.times) - 1) / (stamps.times[-1] - stamps.times[0]))
    return statistics.median(ttfts), statistics.median(rates)


def neutral_prediction(config, hardware, policy, generation, prompt_tokens: int):
    """The planner's plan for `config` on `hardware` with every factor neutral (efficiency 1, no fixed costs)."""
    from planner.config.request import policy_from_config
    from planner.driver.planning import plan_model
    from planner.model.source import ModelSpec

    arch = config.to_dict()
    spec = ModelSpec(
        name="calibration",
        source="calibration",
        architecture=arch,
        shipped_dtype="float32",
        quantization=None,
        fallback=None,
        trust_remote_code=False,
        chat_template=None,
        model_dir=None,
    )
    performance = {"prompt_tokens": prompt_tokens, "gpu": NEUTRAL, "cpu": NEUTRAL, "cpu_half": NEUTRAL}
    typed = policy if not hasattr(policy, "keys") else policy_from_config(policy)
    neutral = replace(typed, performance=performance, context_tokens=1024, sessions=1)
    plan = plan_model(spec, replace(hardware, speed_factors={}), neutral, explain=False)
    if not plan.fits or not plan.performance.get("available"):
        raise ShardwiseError(f"cannot calibrate: the planner gives no speed for this machine ({plan.performance})")
    return plan


def calibrate(cfg, hardware, log=print) -> dict:
    """{kind: factors} measured on `hardware` (first GPU or the CPU) for the shapes in `cfg.shapes`."""
    from planner.speed.calibration import Sample, fit_factors

    gpus = [d for d in hardware.devices if d.node == 0]
    hardware = replace(hardware, devices=tuple(gpus[:1]), nodes=1)
    samples, kind, device = [], None, "cuda:0" if gpus else "cpu"
    for shape in cfg.shapes:
        config = llama_config(tuple(int(x) for x in shape))
        plan = neutral_prediction(config, hardware, cfg.policy, cfg.generation, int(cfg.prompt_tokens))
        dtype = plan.model.dtype
        kind = "gpu" if gpus else ("cpu" if dtype == "float32" else "cpu_half")
        model = build(config, dtype, device)
        ttft, rate = measure(model, int(cfg.prompt_tokens), int(cfg.new_tokens), int(cfg.runs))
        del model
        perf = plan.performance
        log(
            f"{plan.model.params_total / 1e6:6.0f}M params, {dtype} on {device}: decode {rate:8.2f} tok/s "
            f"(roofline {perf['decode_tokens_per_s']:.2f}), first token {ttft:.3f} s (roofline {perf['ttft_s']:.3f})"
        )
        samples.append(Sample(plan.model.num_layers, 1 / perf["decode_tokens_per_s"], 1 / rate, perf["ttft_s"], ttft))
    return {kind: fit_factors(samples)}
