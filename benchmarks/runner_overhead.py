"""ChatSession overhead against plain `model.generate` on the same model, dtype, threads and greedy decoding.

    python benchmarks/runner_overhead.py [--hidden 512 --layers 8 --new-tokens 128 --repeats 5]

Builds a ~25M-parameter Llama-style model with random weights in a temp dir (no download),
then alternates raw generate and ChatSession.generate on the same prompt ids, and prints the
median tokens/s and time to first token of each with their ratio (target: >= 0.95).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import torch
    from tiny_models import cpu_plan, tiny_llama

    from runner.engine.loader import load
    from runner.engine.session import ChatSession
    from runner.engine.types import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="shardwise-bench-"))
    model_dir = tiny_llama(
        root,
        name="bench-llama",
        hidden_size=args.hidden,
        num_layers=args.layers,
        intermediate_size=args.hidden * 11 // 4,
        num_heads=8,
        num_kv_heads=4,
        max_position_embeddings=1024,
    )
    loaded = load(cpu_plan(model_dir, max_new_tokens=args.new_tokens), log=lambda line: None)
    params_m = sum(p.numel() for p in loaded.model.parameters()) / 1e6
    session = ChatSession(
        loaded, defaults=SamplingParams(max_tokens=args.new_tokens, temperature=0), on_notice=lambda line: None
    )
    messages = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog " * 4}]
    prompt_ids, _ = session.fit_prompt(messages, args.new_tokens)
    input_ids = torch.tensor([prompt_ids])
    model = loaded.model

    def raw(max_new: int) -> tuple[int, float]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=max_new,
                pad_token_id=0,
            )
        return out.shape[1] - input_ids.shape[1], time.perf_counter() - start

    def ours(max_new: int) -> tuple[int, float, float]:
        start = time.perf_counter()
        c = session.generate(messages, SamplingParams(max_tokens=max_new, temperature=0))
        return c.usage.completion_tokens, time.perf_counter() - start, c.time_to_first_token_s

    raw(4), ours(4)  # warm-up
    raw_tps, our_tps, raw_ttft, our_ttft, counts = [], [], [], [], set()
    for _ in range(args.repeats):
        n, seconds = raw(args.new_tokens)
        raw_tps.append(n / seconds)
        counts.add(("raw", n))
        raw_ttft.append(raw(1)[1])
        n, seconds, ttft = ours(args.new_tokens)
        our_tps.append(n / seconds)
        counts.add(("session", n))
        our_ttft.append(ttft)
    median = statistics.median
    print(f"generated tokens per run: {sorted(counts)}")
    print(
        f"model: llama-style {params_m:.1f}M params, float32, {torch.get_num_threads()} threads, "
        f"prompt {len(prompt_ids)} tokens, {args.new_tokens} new tokens, greedy, median of {args.repeats}"
    )
    print(f"{'':<14}{'tokens/s':>10}{'TTFT ms':>10}")
    print(f"{'model.generate':<14}{median(raw_tps):>10.1f}{median(raw_ttft) * 1e3:>10.1f}")
    print(f"{'ChatSession':<14}{median(our_tps):>10.1f}{median(our_ttft) * 1e3:>10.1f}")
    ratio = median(our_tps) / median(raw_tps)
    print(f"ratio tokens/s ChatSession / raw: {ratio:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
