"""`shardwise serve` against `transformers serve --continuous-batching`, alternately, on the same model and requests.

    .venv/bin/python benchmarks/serve_versus.py --peer-python /work/peer-venv/bin/python
    .venv/bin/python benchmarks/serve_versus.py --peer-python PY --clients 1 16 --repeats 5 --max-tokens 32

Both servers are separate processes started once and kept up for the whole run, so neither shares a Python
interpreter (and its lock) with the load generator: shardwise is the real CLI (`python -m runner serve
plan_file=PLAN hardware=cpu`), the plan made by the planner for the model with `policy.sessions=16
policy.context_tokens=512`; the peer is benchmarks/serve_peer.py's `transformers serve MODEL --continuous-batching`
with that plan's cache sizes (block size, block count, tokens per step), float32, sdpa, torch's default threads on
both. The model is serve_load.py's ~40M-parameter Llama-style one (random weights, chat template); prompts ~64
tokens, greedy, streaming, each request its own prompt.

At every client count the two servers take turns, A B then B A, `--repeats` times, each turn the same requests
through `clients` concurrent streaming clients (one warm-up request per server before the first turn). The ratio
shardwise / peer is taken within each repeat (back to back, under the same load) and printed as median [min-max],
tok/s as median [min-max]. Every shardwise stream is checked for framing and must equal, token for token, the
reply it gave the same prompt on its first turn (greedy: batching and load may not change it); the peer's
replies are compared with shardwise's and the matches counted (reported only). Bounded: fixed request counts,
a wall-clock limit per turn, loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "tests", REPO / "benchmarks"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from serve_load import COMPARE_CONTEXT, COMPARE_MODEL, check_stream, greedy_cases, run_load, summarize  # noqa: E402
from serve_peer import PeerServer, check_peer_stream, free_port, peer_versions  # noqa: E402


class ShardwiseServer:
    """`python -m runner serve plan_file=PLAN` on 127.0.0.1, stopped (by its pid) on exit."""

    def __init__(self, plan_path: Path, *, max_queue: int, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.label = "shardwise serve"
        self.command = [
            sys.executable,
            "-m",
            "runner",
            "serve",
            "hardware=cpu",
            f"plan_file={plan_path}",
            f"serve.port={self.port}",
            f"serve.max_queue={max_queue}",
            "serve.log_level=warning",  # the peer runs with --log-level error: neither writes a line per request
            f"hydra.run.dir={log_dir / 'shardwise-run'}",
        ]
        self.log_path = log_dir / "shardwise.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            self.command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=log_dir
        )

    wait_ready = PeerServer.wait_ready
    log_tail = PeerServer.log_tail
    stop = PeerServer.stop
    __enter__ = PeerServer.__enter__
    __exit__ = PeerServer.__exit__


def plan_model(workdir: Path, sessions: int):
    from tiny_models import tiny_llama

    from planner.config.compose import make_plan

    model_dir = tiny_llama(workdir, name="bench-llama", **COMPARE_MODEL)
    overrides = [f"policy.sessions={sessions}", f"policy.context_tokens={COMPARE_CONTEXT}"]
    plan = make_plan(model_path=str(model_dir), hardware="cpu", overrides=overrides)
    return model_dir, plan, plan.save(workdir / "plan.json")


def one_turn(server, model: str, cases, clients: int, timeout_s: float, checker) -> dict:
    results, _, wall_s = asyncio.run(run_load(server.url, model, cases, clients, timeout_s, checker))
    return summarize(results, wall_s)


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def versus(args) -> int:
    from serve_load import unchecked
    from transformers import AutoTokenizer

    versions = peer_versions(args.peer_python)
    load_before = os.getloadavg()
    started = time.perf_counter()
    rows, ok, matches = [], True, 0
    with tempfile.TemporaryDirectory(prefix="shardwise-versus-") as tmp:
        workdir = Path(tmp)
        model_dir, plan, plan_path = plan_model(workdir, max(args.clients))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        points = {
            c: greedy_cases(max(args.min_requests, c), args.prompt_tokens, args.max_tokens, tokenizer)
            for c in args.clients
        }
        shardwise = ShardwiseServer(plan_path, max_queue=2 * max(args.clients), log_dir=workdir)
        peer = PeerServer(
            args.peer_python, model_dir, continuous_batching=True, threads=0, serving=plan.serving, log_dir=workdir
        )
        with shardwise, peer:
            name, warm = plan.model.name, points[args.clients[0]][:1]
            one_turn(shardwise, name, unchecked(warm), 1, args.timeout_s, check_stream)
            one_turn(peer, peer.model, unchecked(warm), 1, args.timeout_s, check_peer_stream)
            references: dict[int, tuple[str, int]] = {}  # prompt text -> shardwise's first reply to it
            for clients in args.clients:
                cases = points[clients]
                runs = {"shardwise": [], "peer": []}
                for repeat in range(args.repeats):
                    order = ["shardwise", "peer"] if repeat % 2 == 0 else ["peer", "shardwise"]
                    for side in order:
                        if side == "peer":
                            runs[side].append(
                                one_turn(peer, peer.model, unchecked(cases), clients, args.timeout_s, check_peer_stream)
                            )
                            continue
                        checked = [_with_reference(case, references) for case in cases]
                        row = one_turn(shardwise, name, checked, clients, args.timeout_s, check_stream)
                        for case, result in zip(cases, row["results"]):
                            if result.ok:
                                references.setdefault(_key(case), (result.text, result.completion_tokens))
                        runs[side].append(row)
                rows.append((clients, len(cases), runs))
                ok &= all(run["errors"] == 0 for run in runs["shardwise"])
                matches += sum(
                    r.ok and references.get(_key(c), ("",))[0] == r.text
                    for run in runs["peer"]
                    for r, c in zip(run["results"], cases)
                )
    print(
        f"model: Llama-style ~40M parameters ({COMPARE_MODEL}), float32, sdpa, CPU ({os.cpu_count()} cores, shared "
        f"with other jobs), torch's default threads in each server; prompts ~{args.prompt_tokens} tokens, "
        f"{args.max_tokens} new tokens, greedy, streaming"
    )
    print(
        f"shardwise: `python -m runner serve hardware=cpu plan_file=PLAN serve.log_level=warning`; the plan: "
        f"{plan.serving.max_concurrent} sessions of {plan.limits.context_tokens} tokens, {plan.serving.num_blocks} "
        f"blocks of {plan.serving.page_size_tokens} tokens, {plan.serving.max_batch_tokens} tokens per step"
    )
    print(f"peer: {versions}, `transformers {' '.join(peer.command[4:])}` (serve_peer.py's launcher)")
    print(
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (1 min); "
        f"the run took {time.perf_counter() - started:.0f} s"
    )
    print()
    print(
        "| clients | requests | runs | shardwise tok/s | transformers CB tok/s | shardwise / CB median [min-max] "
        "| TTFT p50 s (shardwise / CB) | latency p50 s (shardwise / CB) | errors (shardwise / CB) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for clients, count, runs in rows:
        ours, theirs = runs["shardwise"], runs["peer"]
        ratios = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(ours, theirs)]
        mid = {
            key: [statistics.median(run[key] for run in side) for side in (ours, theirs)] for key in ("ttft_p50", "p50")
        }
        print(
            f"| {clients} | {count} | {len(ours)} | {spread([r['tokens_per_s'] for r in ours], 0)} "
            f"| {spread([r['tokens_per_s'] for r in theirs], 0)} | {spread(ratios)} "
            f"| {mid['ttft_p50'][0]:.3f} / {mid['ttft_p50'][1]:.3f} | {mid['p50'][0]:.3f} / {mid['p50'][1]:.3f} "
            f"| {sum(r['errors'] for r in ours)} / {sum(r['errors'] for r in theirs)} |"
        )
        for side, got in runs.items():
            for problem in {p for run in got for p in run["problems"]}:
                print(f"  problem ({side}): {problem}")
    total = sum(len(runs["peer"]) * count for _, count, runs in rows)
    print()
    print(
        "every shardwise stream equals shardwise's first reply to the same prompt, token for token"
        + ("" if ok else ": NO, see the problems above")
    )
    print(f"transformers CB streamed the same text as shardwise in {matches} of {total} replies (reported only)")
    return 0 if ok else 1


def _key(case) -> str:
    return case.messages[-1]["content"]


def _with_reference(case, references: dict):
    from dataclasses import replace

    text, tokens = references.get(_key(case), (None, None))
    return replace(case, expected_text=text, expected_tokens=tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", required=True, help="a Python with transformers[serving] of this version")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16], help="concurrent streaming clients")
    parser.add_argument("--repeats", type=int, default=5, help="alternated turns of each server per point")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens per request")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="prompt length, tokens")
    parser.add_argument("--min-requests", type=int, default=8, help="requests per point at least")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="wall-clock limit per turn, seconds")
    args = parser.parse_args(argv)
    bounded = all(1 <= c <= 16 for c in args.clients) and 1 <= args.repeats <= 20 and 1 <= args.max_tokens <= 128
    if not (bounded and 8 <= args.prompt_tokens <= 256 and 1 <= args.min_requests <= 64):
        parser.error(
            "keep it bounded: --clients 1-16, --repeats 1-20, --max-tokens 1-128, --prompt-tokens 8-256, "
            "--min-requests 1-64"
        )
    args.clients = sorted(set(args.clients))
    return versus(args)


if __name__ == "__main__":
    raise SystemExit(main())
