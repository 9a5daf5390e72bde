"""One torchrun rank of a tensor-parallel (and, across nodes, pipeline-parallel) chat.

    torchrun --nproc-per-node=2 --standalone -m runner.launch.worker --plan plan.json --prompt "hello"

`shardwise launch` renders and starts this; Hydra never runs here, the worker reads only
`plan.json` and the sampling settings the parent resolved (`--max-tokens`, ...: the `generation`
config, absent ones take SamplingParams' defaults). Every rank loads the model with transformers'
own distributed loading (`DistributedConfig(tp_size, pp_size)`: tensor parallel inside a node,
pipeline stages across nodes), gloo on CPU and NCCL on GPUs.

The rank is a thin loop over the engine ChatSession uses: rank 0 owns the conversation, builds
and fits the prompt with runner.engine.prompt (same template, same dropping of old turns, same
ContextLengthError), draws a seed when none is set, and broadcasts the request; every rank then
runs runner.engine.generate.generate_ids (stop strings, penalties, the plan's chunked prefill),
and the ranks compare their token ids and stop if they diverged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from pathlib import Path

from planner.errors import ShardwiseError
from planner.planfile.plan import Plan
from runner.engine.prompt import ChatPrompt, ContextLengthError, context_tokens, max_new_tokens
from runner.engine.sampling import SamplingParams


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
    # No defaults here: an absent value takes SamplingParams' default (conf/generation's).
    parser.add_argument("--max-tokens", type=int, default=None, help="new tokens per reply at most")
    parser.add_argument("--temperature", type=float, default=None, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed; none: rank 0 draws one per request")
    parser.add_argument("--stop", action="append", default=None, help="stop string (repeat for more)")
    parser.add_argument("--system-prompt", default=None)
    parser.add_argument("--record-dir", default=None, help="write rank<N>.jsonl with each request's token ids here")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="consent to run Python shipped with the model when the plan asks for it (else such a plan is refused)",
    )
    return parser.parse_args(argv)


TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def rank_env() -> dict[str, int]:
    """The rank's place from the variables torchrun sets; a one-line error when they are missing or not numbers."""
    missing = [name for name in TORCHRUN_ENV if not os.environ.get(name)]
    if missing:
        raise ShardwiseError(
            f"{', '.join(missing)} not set: this is one torchrun rank, start it with `shardwise launch plan_file=...`"
        )
    values = {}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT"):
        text = os.environ[name].strip()
        if not text.isdigit():
            raise ShardwiseError(f"{name}={text!r:.40} is not a number: start the ranks with `shardwise launch`")
        values[name] = int(text)
    if values["WORLD_SIZE"] < 1 or values["RANK"] >= values["WORLD_SIZE"]:
        raise ShardwiseError(
            f"RANK={values['RANK']} is outside WORLD_SIZE={values['WORLD_SIZE']}: "
            "start the ranks with `shardwise launch`"
        )
    return values


def init_distributed(plan: Plan):
    """Start torch.distributed: NCCL with one GPU per local rank when the plan has GPUs and CUDA is here, else gloo."""
    import torch
    import torch.distributed as dist

    env = rank_env()
    world = env["WORLD_SIZE"]
    expected = plan.tp_size * plan.pp_size
    if world != expected:
        raise ShardwiseError(
            f"torchrun started {world} ranks but the plan needs tp {plan.tp_size} x pp {plan.pp_size} = {expected}: "
            f"start it with `shardwise launch plan_file=...`"
        )
    local_rank = env["LOCAL_RANK"]
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
    from transformers import AutoConfig, AutoTokenizer
    from transformers.distributed.configuration_utils import DistributedConfig

    from planner.model.auto_class import auto_model_class
    from runner.engine.loader import local_source

    snapshot = local_source(plan)  # a cached hub commit loads from its directory: no network asked
    source = snapshot or plan.model.source
    revision = None if snapshot else (plan.model.revision or None)  # a hub model: the commit it was planned from
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=plan.model.trust_remote_code, revision=revision)
    config = AutoConfig.from_pretrained(source, trust_remote_code=plan.model.trust_remote_code, revision=revision)
    model = auto_model_class(config)[0].from_pretrained(  # the class config.json names (runner.engine.loader)
        source,
        revision=revision,
        dtype=getattr(torch, plan.model.dtype),
        distributed_config=DistributedConfig(tp_size=plan.tp_size, pp_size=plan.pp_size),
        attn_implementation=plan.attn_implementation,
        trust_remote_code=plan.model.trust_remote_code,
    )
    model.eval()
    return tokenizer, model


class Rank:
    """One rank's model and the engine settings every rank derives the same way from the plan."""

    def __init__(self, plan: Plan, tokenizer, model, device, system_prompt: str | None = None):
        from runner.engine.generate import model_eos_ids, model_pad_id

        self.plan, self.tokenizer, self.model, self.device = plan, tokenizer, model, device
        self.prompt = ChatPrompt(tokenizer, profile_template=plan.model.chat_template, system_prompt=system_prompt)
        self.context_tokens = context_tokens(plan, model.config)
        self.eos_ids = model_eos_ids(model, tokenizer)
        self.pad_id = model_pad_id(tokenizer, self.eos_ids)

    def request(self, turn: int, messages: list[dict], params: SamplingParams) -> dict:
        """Rank 0: the fitted prompt and everything every rank needs to run the same generation."""
        ids, dropped = self.prompt.fit(messages, context_tokens=self.context_tokens, max_tokens=params.max_tokens)
        if dropped:
            print(
                f"shardwise: dropped the {dropped} oldest message(s) to keep the prompt ({len(ids)} tokens) "
                f"inside the {self.context_tokens}-token context",
                file=sys.stderr,
                flush=True,
            )
        if params.seed is None:  # every rank must sample with the same seed
            params = params.with_overrides(seed=random.SystemRandom().randrange(2**31))
        budget = max_new_tokens(self.context_tokens, len(ids), params.max_tokens, self.plan.limits.max_new_tokens)
        return {"op": "generate", "turn": turn, "input_ids": ids, "params": params.to_dict(), "max_new_tokens": budget}

    def generate(self, request: dict):
        """Every rank: the engine's generation loop on the broadcast request."""
        from runner.engine.generate import generate_ids

        return generate_ids(
            self.model,
            self.tokenizer,
            request["input_ids"],
            SamplingParams(**request["params"]),
            max_new_tokens=request["max_new_tokens"],
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            stops=self.prompt.template_stops,
            prefill_chunk_tokens=self.plan.limits.prefill_chunk_tokens,
            device=self.device,
        )


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


def serve_rank0(rank: Rank, args, params: SamplingParams, record) -> int:
    """The conversation on rank 0; returns how many turns failed (a prompt that cannot fit the context)."""
    import torch.distributed as dist

    messages: list[dict] = []
    failed = 0
    for turn, user_text in enumerate(prompts(args)):
        messages.append({"role": "user", "content": user_text})
        try:
            request = rank.request(turn, messages, params)
        except ContextLengthError as exc:
            print(f"shardwise worker: error: {exc}", file=sys.stderr, flush=True)
            messages.pop()
            failed += 1
            continue
        dist.broadcast_object_list([request], src=0)
        completion = generate_checked(rank, request, record)
        print(completion.text.strip(), flush=True)
        messages.append({"role": "assistant", "content": completion.text})
    dist.broadcast_object_list([{"op": "stop"}], src=0)
    return failed


def serve_follower(rank: Rank, record) -> None:
    import torch.distributed as dist

    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        request = box[0]
        if request["op"] == "stop":
            return
        generate_checked(rank, request, record)


def generate_checked(rank: Rank, request: dict, record):
    """Generate, then make sure every rank produced the same ids (they share logits, seed and inputs)."""
    import torch.distributed as dist

    completion = rank.generate(request)
    new_ids = completion.token_ids
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, new_ids)
    record(
        {
            "turn": request["turn"],
            "seed": request["params"]["seed"],
            "input_ids": request["input_ids"],
            "output_ids": new_ids,
            "finish_reason": completion.finish_reason,
        }
    )
    if any(ids != new_ids for ids in everyone):
        raise RuntimeError(f"ranks diverged on turn {request['turn']}: {everyone}")
    return completion


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        plan = Plan.load(args.plan)
        from runner.engine.preflight import check_remote_code, check_runnable

        rank_env()  # before torch: run outside torchrun is a one-line error
        check_remote_code(plan, args.trust_remote_code, "add --trust-remote-code to this command")
        check_runnable(plan)  # the checks every other runner path makes before anything loads
        params = SamplingParams.from_generation(args, prefix="--")
        import torch.distributed as dist

        device = init_distributed(plan)
    except ShardwiseError as exc:
        print(f"shardwise worker: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    rank_id = dist.get_rank()
    if rank_id != 0:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    tokenizer, model = load(plan)
    rank = Rank(plan, tokenizer, model, device, system_prompt=args.system_prompt)

    def record(entry: dict) -> None:
        if not args.record_dir:
            return
        path = Path(args.record_dir) / f"rank{rank_id}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {
            "rank": rank_id,
            "world_size": dist.get_world_size(),
            "tp_size": plan.tp_size,
            "pp_size": plan.pp_size,
            **entry,
        }
        with path.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")

    failed = 0
    try:
        if rank_id == 0:
            failed = serve_rank0(rank, args, params, record)
        else:
            serve_follower(rank, record)
    finally:
        dist.destroy_process_group()
    if failed:
        raise SystemExit(2)


if __name__ == "__main__":
    from runner.interrupts import interrupts_end_cleanly

    with interrupts_end_cleanly("shardwise worker"):
        main()
