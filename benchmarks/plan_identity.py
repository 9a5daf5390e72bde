"""Plans of 22 varied requests, written one file each, to diff two versions of the planner.

    git archive OLD | tar -x -C /tmp/old
    (cd /tmp/old && PYTHONPATH=/tmp/old .venv/bin/python $REPO/benchmarks/plan_identity.py /tmp/plans-old)
    .venv/bin/python benchmarks/plan_identity.py /tmp/plans-new && diff -r /tmp/plans-old /tmp/plans-new

For a refactor that must not change any plan (the planning driver of issue 19): sessions=auto,
model=auto, misfits with their fixes, offload, multi-node, tensor parallel, objectives and
quantization. Only the CPU case (gpt2 on `hardware=cpu`) may differ: its host speed is measured
on each run. A request the planner refuses writes its error line instead of a plan.
"""

import json
import sys
from pathlib import Path

from planner.config.compose import make_plan

CASES = [
    ("gpt-oss-120b", "h100_80gb", ["hardware.count=8"]),
    ("gpt-oss-120b", "h100_80gb", ["policy.context_tokens=131072"]),
    ("gpt-oss-120b", "l4", ["hardware.count=2"]),  # misfit: fixes
    ("gpt-oss-20b", "t4", ["policy.quantization=none"]),
    ("llama-3.1-70b", "h100_80gb", ["hardware.count=4", "policy.objective=latency"]),
    ("llama-3.1-70b", "h100_80gb", ["hardware.count=4", "policy.objective=throughput", "policy.sessions=8"]),
    ("llama-3.1-70b", "t4", ["hardware.count=4", "hardware.nodes=4", "policy.context_tokens=4096"]),
    ("llama-3.1-70b", "h100_80gb", ["hardware.count=8", "hardware.nodes=2", "policy.strategy=tensor_parallel"]),
    ("llama-3.1-8b", "h100_80gb", ["policy.sessions=auto"]),
    ("llama-3.1-8b", "a100_80gb", ["policy.sessions=auto", "policy.max_sessions=8"]),
    ("qwen3-8b", "l4", ["policy.sessions=auto", "policy.context_tokens=32768"]),
    ("gpt2", "cpu", ["policy.sessions=auto"]),
    ("auto", "l4", []),
    ("auto", "h100_80gb", ["hardware.count=2", "policy.context_tokens=65536"]),
    ("deepseek-v3", "t4", ["hardware.count=2"]),  # misfit with fixes
    ("deepseek-v3", "l4", ["policy.allow_cpu_offload=true", "policy.allow_disk_offload=true"]),
    ("mixtral-8x7b", "a100_80gb", ["hardware.count=2", "policy.dtype=float32"]),
    ("qwen3-next-80b-a3b", "h100_80gb", ["hardware.count=2", "policy.sessions=4"]),
    ("gemma-2-9b", "t4", ["policy.context_tokens=8192", "policy.sessions=4"]),  # misfit: fewer sessions
    ("llama-4-scout", "h100_80gb", ["hardware.count=4", "policy.sessions=auto"]),
    ("qwen2.5-7b-awq", "t4", []),
    ("gpt-oss-120b", "a100_80gb", ["hardware.count=2", "policy.sessions=auto"]),
]


def scrub(value):
    """Drop what names a place or a time rather than a planning result."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in ("created_at", "path", "model_dir")}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i, (model, hw, over) in enumerate(CASES):
        name = f"{i:02d}_{model}_{hw}"
        try:
            text = json.dumps(scrub(json.loads(make_plan(model, hw, over).to_json())), indent=1)
        except Exception as exc:  # a refusal is a result too
            text = f"ERROR {type(exc).__name__}: {exc}"
        (out / f"{name}.json").write_text(text)
        verdict = text[:100] if not text.startswith("{") else ("fits" if json.loads(text)["fits"] else "does not fit")
        print(name, verdict, file=sys.stderr)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
