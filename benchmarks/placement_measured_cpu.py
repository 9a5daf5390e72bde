"""Both device maps measured on the CPU: shardwise's plan against `device_map="auto"`, loaded and prefilled.

    .venv/bin/python benchmarks/placement_measured_cpu.py [--repeats 5] [--context 2048] [--json out.json]

A tiny Llama-style model (random weights, saved once to a temporary directory) is loaded in a
fresh process per run, either (A) with the `from_pretrained` keywords of shardwise's plan for
`hardware=cpu` at the context (runner.engine.loader.from_pretrained_kwargs: device_map, dtype,
attention), or (B) with `device_map="auto"` and nothing else, accelerate's documented default
(its own max_memory: the memory it finds free), in the same dtype. Each process then prefills
context - 1 tokens with a DynamicCache and reports its device map, the load and prefill times and
its peak resident memory above what it held just before loading (Linux: VmHWM reset through
/proc/self/clear_refs, read from /proc/self/status). A and B run alternately
(order flipped each round), --repeats rounds; medians with min and max are printed.

What this can and cannot show: a CPU is one device, so both maps put every module on it (the
script prints them); the measurement then checks that shardwise's plan costs nothing extra on the
CPU, not that its multi-GPU placement beats accelerate's. That comparison is only modelled
(placement_vs_accelerate.py) until it is measured on GPUs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

MODEL = {"hidden_size": 512, "num_layers": 8, "intermediate_size": 1408, "num_heads": 8, "num_kv_heads": 4}


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/self/status: this measurement needs Linux")


def child(mode: str, model_dir: str, plan_file: str, context: int) -> None:
    """One run in this process: load as `mode` says, prefill, print one JSON line."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from planner.planfile.plan import Plan
    from runner.engine.loader import from_pretrained_kwargs

    plan = Plan.load(plan_file)
    kwargs = from_pretrained_kwargs(plan)
    if mode == "auto":
        kwargs = {"device_map": "auto", "dtype": kwargs["dtype"]}
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak (VmHWM) to what is resident now
    before_kib = _status_kib("VmRSS")
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs).eval()
    load_s = time.perf_counter() - started
    ids = torch.randint(0, model.config.vocab_size, (1, context - 1))
    started = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=ids, past_key_values=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    prefill_s = time.perf_counter() - started
    peak_kib = _status_kib("VmHWM")
    devices = sorted({str(d) for d in (getattr(model, "hf_device_map", None) or {"": str(model.device)}).values()})
    print(
        json.dumps(
            {
                "mode": mode,
                "devices": devices,
                "load_s": load_s,
                "prefill_s": prefill_s,
                "peak_above_start_bytes": (peak_kib - before_kib) * 1024,
            }
        )
    )


def run_once(mode: str, model_dir: Path, plan_file: Path, context: int, threads: int) -> dict:
    env_threads = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    import os

    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(model_dir), str(plan_file), str(context)],
        capture_output=True,
        text=True,
        env={**os.environ, **env_threads},
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float], scale: float = 1.0, unit: str = "") -> str:
    values = [v / scale for v in values]
    return f"{statistics.median(values):.3f}{unit} (min {min(values):.3f}, max {max(values):.3f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternated rounds of both runs")
    parser.add_argument("--context", type=int, default=2048, help="tokens prefilled (context - 1) in each run")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per run (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write every run to this JSON file")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, model_dir, plan_file, context = args.child
        child(mode, model_dir, plan_file, int(context))
        return 0
    from tiny_models import tiny_llama

    from planner.config.compose import make_plan

    runs: dict[str, list[dict]] = {"shardwise": [], "auto": []}
    with tempfile.TemporaryDirectory(prefix="shardwise-placement-") as root:
        model_dir = tiny_llama(Path(root), name="placement-llama", max_position_embeddings=args.context, **MODEL)
        plan = make_plan(model_path=str(model_dir), hardware="cpu", overrides=[f"policy.context_tokens={args.context}"])
        plan_file = plan.save(Path(root) / "plan.json")
        for mode in ("shardwise", "auto"):  # one unmeasured warm-up each: page cache, imports
            run_once(mode, model_dir, plan_file, args.context, args.threads)
        for i in range(args.repeats):
            order = ("shardwise", "auto") if i % 2 == 0 else ("auto", "shardwise")
            for mode in order:
                runs[mode].append(run_once(mode, model_dir, plan_file, args.context, args.threads))
    print(
        f"{plan.model.name}: {plan.model.params_total / 1e6:.1f}M parameters, {plan.model.dtype}, prefill of "
        f"{args.context - 1} tokens, {args.threads or 'default'} thread(s), {args.repeats} alternated rounds"
    )
    row = plan.budget[0]
    terms = ", ".join(f"{k} {getattr(row, k) / 2**20:.1f}" for k in ("weights", "kv_cache", "activations", "overhead"))
    print(
        f"shardwise plan: device_map {plan.device_map}, planned {row.planned / 2**20:.1f} MiB on {row.device} ({terms})"
    )
    print("| device map | devices used | peak RSS above start, MiB | load s | prefill s |")
    print("|---|---|---|---|---|")
    for mode, label in (("shardwise", "shardwise plan (hardware=cpu)"), ("auto", 'device_map="auto", defaults')):
        got = runs[mode]
        print(
            f"| {label} | {', '.join(got[0]['devices'])} | {spread([r['peak_above_start_bytes'] for r in got], 2**20)} "
            f"| {spread([r['load_s'] for r in got])} | {spread([r['prefill_s'] for r in got])} |"
        )
    ratio = [a["prefill_s"] / b["prefill_s"] for a, b in zip(runs["shardwise"], runs["auto"])]
    memory = [
        a["peak_above_start_bytes"] / b["peak_above_start_bytes"] for a, b in zip(runs["shardwise"], runs["auto"])
    ]
    print(f"per round, shardwise / auto: prefill time {spread(ratio)}, peak memory {spread(memory)}")
    if args.json:
        args.json.write_text(json.dumps({"plan_device_map": plan.device_map, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
