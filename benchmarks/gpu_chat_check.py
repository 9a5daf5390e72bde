"""On a CUDA machine: a real chat turn's measured peak memory per device against the plan's budget.

    python benchmarks/gpu_chat_check.py [--hidden 2048 --layers 16 --prompt-tokens 3000 --new-tokens 256]

Builds a Llama-style model with random weights locally (no download), plans it with the real
planner on this machine (NVML probe), loads it exactly as planned, runs one greedy chat turn with
a long prompt and prints, per device: planned weights / KV / activations / overhead / total,
the measured peak allocated after loading and during the turn, and measured / planned; then the
plan's predicted decode tokens/s and time to first token beside the turn's.

Exit status (benchmarks/gpu_verdicts.py): 1 when a device's peak allocated during the turn lies
outside [0.75, 1.0] x the plan's tensors (weights + KV + activations), else 0; speed is printed,
not judged (the GPU speed model is not validated yet). Skips with a message (exit 0) when CUDA is
not available. `--judge FILE` applies the verdict to the JSON a run wrote with --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests"), str(HERE)]
from gpu_verdicts import chat_failures, exit_status  # noqa: E402  (after the sys.path line above)

from planner.units import GIB  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--prompt-tokens", type=int, default=3000)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--out", type=Path, help="write the rows and speeds as JSON here")
    parser.add_argument("--judge", type=Path, help="apply the verdict to a JSON written by --out and exit by it")
    args = parser.parse_args(argv)
    if args.judge:
        return exit_status(chat_failures(json.loads(args.judge.read_text())["rows"]), "gpu_chat_check")

    import torch

    if not torch.cuda.is_available():
        print("gpu_chat_check: skipped, CUDA is not available on this machine")
        return 0
    from tiny_models import tiny_llama

    from planner.config.compose import make_plan
    from runner.engine.loader import load
    from runner.engine.session import ChatSession
    from runner.engine.telemetry import Telemetry
    from runner.engine.types import SamplingParams

    root = Path(tempfile.mkdtemp(prefix="shardwise-gpu-check-"))
    model_dir = tiny_llama(
        root,
        name="check-llama",
        hidden_size=args.hidden,
        num_layers=args.layers,
        intermediate_size=args.hidden * 11 // 4,
        num_heads=16,
        num_kv_heads=8,
        max_position_embeddings=args.context,
        vocab_size=400,
    )
    plan = make_plan(model_path=str(model_dir), hardware="auto", overrides=[f"policy.context_tokens={args.context}"])
    print(
        f"plan: {plan.model.name} {plan.model.params_total / 1e6:.0f}M params, {plan.model.dtype}, {plan.strategy}, "
        f"device_map {plan.device_map}, context {plan.limits.context_tokens}, fits={plan.fits}"
    )
    loaded = load(plan)
    after_load = {str(i): torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())}
    telemetry = Telemetry(None)
    session = ChatSession(
        loaded, defaults=SamplingParams(max_tokens=args.new_tokens, temperature=0), telemetry=telemetry
    )
    words = "the quick brown fox jumps over the lazy dog "
    text = words * max(1, args.prompt_tokens // 9)
    while session.prompt_token_count([{"role": "user", "content": text}]) > args.prompt_tokens:
        text = text[: int(len(text) * 0.95)]
    completion = session.generate([{"role": "user", "content": text}])
    record = telemetry.turns[-1]
    print(
        f"turn: prompt {completion.usage.prompt_tokens} tokens, {completion.usage.completion_tokens} generated, "
        f"TTFT {completion.time_to_first_token_s * 1e3:.0f} ms, {completion.tokens_per_s:.0f} tok/s"
    )
    header = (
        f"{'device':<7}{'weights':>9}{'kv':>8}{'activ':>8}{'overhd':>8}"
        f"{'planned':>9}{'load':>9}{'peak':>9}{'peak/planned':>14}"
    )
    print(header + "   (GiB; peak = max allocated during the turn)")
    rows = []
    for budget in plan.budget:
        key = str(budget.device)
        peak = record["peak_bytes"].get(key)
        loaded_bytes = after_load.get(key)
        cells = [budget.weights, budget.kv_cache, budget.activations, budget.overhead, budget.planned]
        row = f"{key:<7}" + "".join(f"{c / GIB:>{w}.3f}" for c, w in zip(cells, (9, 8, 8, 8, 9)))
        if peak is not None:
            row += f"{loaded_bytes / GIB:>9.3f}{peak / GIB:>9.3f}{peak / budget.planned:>14.3f}"
            tensors = budget.weights + budget.kv_cache + budget.activations
            rows.append({"device": key, "peak": peak, "planned_tensors": tensors, "planned_total": budget.planned})
        print(row)
    perf = plan.performance or {}
    speed = {
        "predicted_decode_tokens_per_s": perf.get("decode_tokens_per_s"),
        "measured_decode_tokens_per_s": completion.tokens_per_s,
        "predicted_ttft_s": perf.get("ttft_s"),
        "predicted_ttft_prompt_tokens": perf.get("prompt_tokens"),
        "measured_ttft_s": completion.time_to_first_token_s,
        "measured_prompt_tokens": completion.usage.prompt_tokens,
    }
    print(
        f"speed: decode predicted {speed['predicted_decode_tokens_per_s']} tok/s, measured "
        f"{completion.tokens_per_s:.1f}; first token predicted {speed['predicted_ttft_s']} s "
        f"({speed['predicted_ttft_prompt_tokens']}-token prompt), measured {completion.time_to_first_token_s:.3f} s "
        f"({completion.usage.prompt_tokens}-token prompt); speed is reported, not judged"
    )
    if args.out:
        args.out.write_text(json.dumps({"plan": plan.model.name, "rows": rows, "speed": speed}, indent=2) + "\n")
    return exit_status(chat_failures(rows), "gpu_chat_check")


if __name__ == "__main__":
    raise SystemExit(main())
