"""One torchrun rank of a tensor-parallel (and, across nodes, pipeline-parallel) chat.

    torchrun --nproc-per-node=2 --standalone -m runner.launch.worker --plan plan.json --prompt "hello"

`shardwise launch` renders and starts this; Hydra never runs here, the worker reads only
`plan.json` and the sampling settings the parent resolved. Every rank loads the model with
transformers' own distributed loading (`DistributedConfig(tp_size, pp_size)`: tensor parallel
inside a node, pipeline stages across nodes), gloo on CPU and NCCL on GPUs. Rank 0 owns the
conversation: it reads prompts (arguments or stdin), applies the chat template, and broadcasts
each request -- token ids, sampling parameters and seed -- so every rank runs the same
`generate()` call; afterwards the ranks compare their token ids and stop if they diverged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from planner.errors import ShardwiseError
from planner.plan import Plan

PLAIN_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runner.launch.worker", description="one torchrun rank of a shardwise plan"
    )
    parser.add_argument("--plan", required=True, help="plan.json written by shardwise plan/launch")
    parser.add_argument(
        "--prompt",
        action="append",
        default=[],
        help="user turn (repeat for a conversation); none: read stdin on rank 0",
    )
    parser.add_argument("--max-tokens", type=int, default=256, help="new tokens per reply at most")
    parser.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None, help="sampling seed; none: rank 0 draws one per request")
    parser.add_argument("--system-prompt", default=None)
    parser.add_argument("--record-dir", default=None, help="write rank<N>.jsonl with each request's token ids here")
    return parser.parse_args(argv)


def init_distributed(plan: Plan):
    """Start torch.distributed: NCCL with one GPU per local rank when the plan has GPUs and CUDA is here, else gloo."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    expected = plan.tp_size * plan.pp_size
    if world != expected:
        raise ShardwiseError(
            f"torchrun started {world} ranks but the plan needs tp {plan.tp_size} x pp {plan.pp_size} = {expected}: start it with `shardwise launch plan_file=...`"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if plan.hardware.get("devices") and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return device


def load(plan: Plan):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.distributed.configuration_utils import DistributedConfig

    tokenizer = AutoTokenizer.from_pretrained(plan.model.source, trust_remote_code=plan.model.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        plan.model.source,
        dtype=getattr(torch, plan.model.dtype),
        distributed_config=DistributedConfig(tp_size=plan.tp_size, pp_size=plan.pp_size),
        attn_implementation=plan.attn_implementation,
        trust_remote_code=plan.model.trust_remote_code,
    )
    model.eval()
    return tokenizer, model


def encode_conversation(tokenizer, messages: list[dict], template: str | None, budget_tokens: int) -> list[int]:
    """Prompt ids for the conversation, dropping the oldest turns (never the system message) to stay in budget."""
    messages = list(messages)
    chat_template = tokenizer.chat_template or template or PLAIN_TEMPLATE
    while True:
        text = tokenizer.apply_chat_template(
            messages, chat_template=chat_template, add_generation_prompt=True, tokenize=False
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        first_turn = 1 if messages and messages[0]["role"] == "system" else 0
        if len(ids) <= budget_tokens or len(messages) - first_turn <= 1:
            return ids[-budget_tokens:]
        del messages[first_turn]


def prompts(args: argparse.Namespace):
    """User turns: the --prompt arguments, else lines from stdin until EOF or an empty line."""
    if args.prompt:
        yield from args.prompt
        return
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return
        yield line.rstrip("\n")


def run_request(model, request: dict, device) -> list[int]:
    """The same generate() call on every rank: ids in, new ids out."""
    import torch

    input_ids = torch.tensor([request["input_ids"]], device=device)
    torch.manual_seed(request["seed"])
    sample = request["temperature"] > 0
    kwargs = {"temperature": request["temperature"], "top_p": request["top_p"]} if sample else {}
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=request["max_new_tokens"],
            do_sample=sample,
            **kwargs,
        )
    return out[0, input_ids.shape[1] :].tolist()


def serve_rank0(plan: Plan, args, tokenizer, model, device, record) -> None:
    import torch.distributed as dist

    messages = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
    max_new = min(args.max_tokens, plan.limits.max_new_tokens or args.max_tokens)
    for turn, user_text in enumerate(prompts(args)):
        messages.append({"role": "user", "content": user_text})
        budget = max(plan.limits.context_tokens - max_new, 1)
        ids = encode_conversation(tokenizer, messages, plan.model.chat_template, budget)
        seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
        request = {
            "op": "generate",
            "turn": turn,
            "input_ids": ids,
            "max_new_tokens": max(1, min(max_new, plan.limits.context_tokens - len(ids))),
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": seed,
        }
        box = [request]
        dist.broadcast_object_list(box, src=0)
        new_ids = generate_checked(model, request, device, record)
        reply = tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        print(reply, flush=True)
        messages.append({"role": "assistant", "content": reply})
    dist.broadcast_object_list([{"op": "stop"}], src=0)


def serve_follower(model, device, record) -> None:
    import torch.distributed as dist

    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        request = box[0]
        if request["op"] == "stop":
            return
        generate_checked(model, request, device, record)


def generate_checked(model, request: dict, device, record) -> list[int]:
    """Generate, then make sure every rank produced the same ids (they share logits, seed and inputs)."""
    import torch.distributed as dist

    new_ids = run_request(model, request, device)
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, new_ids)
    record({"turn": request["turn"], "seed": request["seed"], "input_ids": request["input_ids"], "output_ids": new_ids})
    if any(ids != new_ids for ids in everyone):
        raise RuntimeError(f"ranks diverged on turn {request['turn']}: {everyone}")
    return new_ids


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        plan = Plan.load(args.plan)
        import torch.distributed as dist

        device = init_distributed(plan)
    except ShardwiseError as exc:
        print(f"shardwise tp_worker: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    rank = dist.get_rank()
    if rank != 0:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    tokenizer, model = load(plan)

    def record(entry: dict) -> None:
        if not args.record_dir:
            return
        path = Path(args.record_dir) / f"rank{rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "rank": rank,
            "world_size": dist.get_world_size(),
            "tp_size": plan.tp_size,
            "pp_size": plan.pp_size,
            **entry,
        }
        with path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")

    try:
        if rank == 0:
            serve_rank0(plan, args, tokenizer, model, device, record)
        else:
            serve_follower(model, device, record)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
