"""Bounded load test of `shardwise serve`: N concurrent streaming clients against a tiny model on loopback.

    .venv/bin/python benchmarks/serve_load.py                       # 8 clients, 48 requests
    .venv/bin/python benchmarks/serve_load.py --clients 16 --requests 64 --max-tokens 32
    .venv/bin/python benchmarks/serve_load.py --compare             # batched vs sequential vs ceilings, 1-16 clients

`--compare` builds a ~40M-parameter Llama-style model (random weights) and, at 1, 4, 8 and 16 concurrent
greedy streaming clients, serves it twice through the same server code: with continuous batching
(runner.engine.batching, sized like a plan with 16 sessions) and with the old one-at-a-time path. Beside
them: raw `model.generate` for one sequence (the 1-client target) and transformers' in-process
`generate_batch` with every request at once (the ceiling; `transformers serve` needs fastapi, which this
venv lacks). Every streamed reply must equal the sequential session's greedy reply token for token.

It builds a tiny Llama (random weights, chat template) in a temporary directory, loads it the
way `shardwise serve` does (runner.engine.loader.load -> ChatSession), and serves it on 127.0.0.1 with
a free port. Every request carries its own prompt and seed, so its reply is known in advance:
a sequential reference is generated through the session first, and each streamed reply must
equal its reference exactly (a reply mixed with another request's tokens cannot). Each stream is
checked for framing: role chunk first, one finish chunk, the usage chunk, `data: [DONE]`. A
poller hits /health every 100 ms throughout. Prints latency and time-to-first-token p50/p95,
throughput and error counts; exits 1 if anything was wrong. Bounded: a fixed request count and
a wall-clock limit (--timeout-s); nothing leaves loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PROMPTS = [
    "hello world, how are you today?",
    "what is the capital of France?",
    "one two three four five",
    "tell me about memory and tokens",
    "the quick brown fox",
    "plan a shard for this model",
]


@dataclass
class Case:
    """One request: its body and the reply a sequential run gives for it."""

    index: int
    messages: list
    seed: int | None
    max_tokens: int
    temperature: float = 1.0
    expected_text: str | None = None
    expected_tokens: int | None = None

    def body(self, model: str) -> dict:
        return {
            "model": model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
            **({"seed": self.seed} if self.seed is not None else {}),
        }


@dataclass
class Result:
    index: int
    ok: bool = False
    problem: str = ""
    latency_s: float = 0.0
    ttft_s: float | None = None
    completion_tokens: int = 0
    mixed: bool = False
    text: str = ""


@dataclass
class HealthLog:
    answered: int = 0
    failed: int = 0
    slowest_s: float = 0.0
    failures: list = field(default_factory=list)


def make_cases(requests: int, max_tokens: int) -> list[Case]:
    return [
        Case(i, [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} (request {i})"}], 1000 + i, max_tokens)
        for i in range(requests)
    ]


def fill_references(session, cases: list[Case]) -> float:
    """Each case's reply from the session itself, one after another; returns the seconds it took."""
    from runner.engine.types import SamplingParams

    start = time.perf_counter()
    for case in cases:
        completion = session.generate(
            case.messages, SamplingParams(max_tokens=case.max_tokens, temperature=case.temperature, seed=case.seed)
        )
        case.expected_text, case.expected_tokens = completion.text, completion.usage.completion_tokens
    return time.perf_counter() - start


def check_stream(events: list[str], case: Case) -> tuple[str, str, int, str | None]:
    """(problem or "", text, completion tokens, id) for one request's SSE events."""
    if not events or events[-1] != "[DONE]":
        return "stream does not end with data: [DONE]", "", 0, None
    try:
        chunks = [json.loads(e) for e in events[:-1]]
    except json.JSONDecodeError as exc:
        return f"a data line is not JSON ({exc})", "", 0, None
    if any("error" in c for c in chunks):
        return f"error event: {next(c['error'] for c in chunks if 'error' in c)}", "", 0, None
    ids = {c.get("id") for c in chunks}
    if len(ids) != 1:
        return f"chunks carry {len(ids)} different ids", "", 0, None
    if not chunks or chunks[0]["choices"][0]["delta"].get("role") != "assistant":
        return "first chunk does not carry the assistant role", "", 0, None
    usage = chunks[-1]
    if usage.get("choices") != [] or not usage.get("usage"):
        return "last chunk before [DONE] is not the usage chunk", "", 0, None
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-1] if c["choices"][0]["finish_reason"]]
    if len(finishes) != 1:
        return f"{len(finishes)} chunks carry finish_reason (want exactly 1)", "", 0, None
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    return "", text, usage["usage"]["completion_tokens"], ids.pop()


async def one_request(client, url: str, model: str, case: Case, limit: asyncio.Semaphore) -> Result:
    result = Result(case.index)
    async with limit:
        start = time.perf_counter()
        events: list[str] = []
        try:
            async with client.stream("POST", url + "/v1/chat/completions", json=case.body(model)) as response:
                if response.status_code != 200:
                    result.problem = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                    return result
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    if not line.startswith("data: "):
                        result.problem = f"not an SSE data line: {line[:80]!r}"
                        return result
                    data = line[len("data: ") :]
                    if result.ttft_s is None and '"content":"' in data and '"content":""' not in data:
                        result.ttft_s = time.perf_counter() - start
                    events.append(data)
        except Exception as exc:  # a transport failure is a counted error, not a crash of the benchmark
            result.problem = f"{type(exc).__name__}: {exc}"
            return result
        result.latency_s = time.perf_counter() - start
    problem, text, tokens, _ = check_stream(events, case)
    result.completion_tokens, result.text = tokens, text
    if problem:
        result.problem = problem
    elif case.expected_text is not None and (text != case.expected_text or tokens != case.expected_tokens):
        result.mixed = True
        result.problem = f"reply differs from the sequential reference ({text[:40]!r} vs {case.expected_text[:40]!r})"
    else:
        result.ok = True
    return result


async def poll_health(client, url: str, stop: asyncio.Event, log: HealthLog) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            response = await client.get(url + "/health", timeout=5)
            if response.status_code == 200:
                log.answered += 1
            else:
                log.failed += 1
                log.failures.append(f"HTTP {response.status_code}")
        except Exception as exc:
            log.failed += 1
            log.failures.append(type(exc).__name__)
        log.slowest_s = max(log.slowest_s, time.perf_counter() - start)
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.1)
        except asyncio.TimeoutError:
            pass


async def run_load(
    url: str, model: str, cases: list[Case], clients: int, timeout_s: float
) -> tuple[list[Result], HealthLog, float]:
    """All cases through `clients` concurrent streams; (results, health log, wall seconds)."""
    import httpx

    limit = asyncio.Semaphore(clients)
    health = HealthLog()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        poller = asyncio.create_task(poll_health(client, url, stop, health))
        start = time.perf_counter()
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(one_request(client, url, model, c, limit) for c in cases)), timeout=timeout_s
            )
        finally:
            wall_s = time.perf_counter() - start
            stop.set()
            await poller
    return results, health, wall_s


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def report(results: list[Result], health: HealthLog, wall_s: float, clients: int, reference_s: float | None) -> bool:
    done = [r for r in results if r.ok]
    errors = [r for r in results if not r.ok]
    latencies = [r.latency_s for r in done]
    ttfts = [r.ttft_s for r in done if r.ttft_s is not None]
    tokens = sum(r.completion_tokens for r in done)
    print(
        f"clients {clients}, requests {len(results)}, complete and identical to reference {len(done)}, "
        f"errors {len(errors)} (mixed {sum(r.mixed for r in results)})"
    )
    print(
        f"latency s: p50 {percentile(latencies, 0.5):.3f}  p95 {percentile(latencies, 0.95):.3f}  "
        f"max {max(latencies, default=float('nan')):.3f}"
    )
    print(
        f"time to first token s (queue wait included): p50 {percentile(ttfts, 0.5):.3f}  "
        f"p95 {percentile(ttfts, 0.95):.3f}"
    )
    print(
        f"throughput: {tokens} completion tokens in {wall_s:.2f} s = {tokens / wall_s:.1f} tokens/s, "
        f"{len(done) / wall_s:.2f} requests/s"
    )
    if reference_s is not None:
        print(f"sequential reference through the session directly: {reference_s:.2f} s")
    print(
        f"/health during the load: {health.answered} answered 200, {health.failed} failed, "
        f"slowest {health.slowest_s * 1000:.0f} ms"
    )
    for r in errors[:5]:
        print(f"  request {r.index}: {r.problem}")
    return not errors and health.failed == 0 and health.answered > 0


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while httpx.get(url + "/health", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise SystemExit(f"the server at {url} was not ready in {timeout_s} s")
        time.sleep(0.05)


def build_session(workdir: Path, max_tokens: int):
    from runner.engine.loader import load
    from runner.engine.session import ChatSession
    from runner.engine.types import SamplingParams

    try:
        from tests.tiny_models import cpu_plan, tiny_llama
    except ImportError:
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_models import cpu_plan, tiny_llama

    model_dir = tiny_llama(workdir)
    plan = cpu_plan(model_dir, context_tokens=256, max_new_tokens=max(64, max_tokens))
    loaded = load(plan, log=lambda line: None)
    return ChatSession(loaded, defaults=SamplingParams(max_tokens=max_tokens), plan=plan, on_notice=lambda line: None)


# ----- --compare: batched vs sequential vs raw generate vs generate_batch ------------------------------

COMPARE_CLIENTS = (1, 4, 8, 16)
COMPARE_MODEL = {  # ~40M parameters, Llama-style
    "hidden_size": 512,
    "num_layers": 12,
    "intermediate_size": 1536,
    "num_heads": 8,
    "num_kv_heads": 4,
    "max_position_embeddings": 512,
}
COMPARE_CONTEXT = 512


def greedy_cases(count: int, prompt_tokens: int, max_tokens: int, tokenizer) -> list[Case]:
    """Distinct prompts of about `prompt_tokens` tokens (template included), greedy."""
    cases = []
    for i in range(count):
        words = f"{PROMPTS[i % len(PROMPTS)]} request {i} " * 40
        ids = tokenizer(words, add_special_tokens=False)["input_ids"][: max(1, prompt_tokens - 8)]
        content = tokenizer.decode(ids)
        cases.append(Case(i, [{"role": "user", "content": content}], None, max_tokens, temperature=0.0))
    return cases


def summarize(results: list[Result], wall_s: float) -> dict:
    done = [r for r in results if r.ok]
    latencies = [r.latency_s for r in done]
    ttfts = [r.ttft_s for r in done if r.ttft_s is not None]
    return {
        "tokens_per_s": sum(r.completion_tokens for r in done) / wall_s,
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "ttft_p50": percentile(ttfts, 0.5),
        "ttft_p95": percentile(ttfts, 0.95),
        "errors": len(results) - len(done),
        "problems": [r.problem for r in results if not r.ok][:3],
        "results": sorted(results, key=lambda r: r.index),
    }


def serve_point(session, name: str, cases: list[Case], clients: int, timeout_s: float) -> dict:
    """One server, two non-streaming warm-up requests (the issue's slow state came after those), then the load."""
    import httpx

    from runner.openai.app import BackgroundServer, ModelSource, ServeSettings, create_app

    app = create_app([ModelSource(name, load=lambda: session)], ServeSettings(max_queue=2 * len(cases)))
    with BackgroundServer(app) as server:
        wait_ready(server.url)
        for case in cases[:2]:
            body = {**case.body(name), "stream": False, "max_tokens": 8}
            body.pop("stream_options")
            httpx.post(server.url + "/v1/chat/completions", json=body, timeout=timeout_s).raise_for_status()
        results, _, wall_s = asyncio.run(run_load(server.url, name, cases, clients, timeout_s))
    return summarize(results, wall_s)


def raw_generate_tokens_per_s(loaded, prompt_ids: list[int], max_tokens: int, runs: int = 3) -> float:
    """Plain model.generate for one greedy sequence, exactly max_tokens tokens; median of `runs`."""
    import statistics

    import torch

    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(
                torch.tensor([prompt_ids]), max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False
            )
        rates.append((out.shape[1] - len(prompt_ids)) / (time.perf_counter() - start))
    return statistics.median(rates)


def generate_batch_tokens_per_s(loaded, serving, prompts: list[list[int]], max_tokens: int) -> float:
    """transformers' own generate_batch with every prompt at once, the same cache settings: the in-process ceiling.

    Timed from the first request's creation to the last one's end (the requests' own timestamps), so the
    manager's start-up and shutdown are not counted against it.
    """
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    generation = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1)
    batching = ContinuousBatchingConfig(
        page_size=serving.page_size_tokens,
        num_blocks=serving.num_blocks,
        max_batch_tokens=serving.max_batch_tokens,
        auto_switch_to_flash=False,
        max_memory_percent=1.0,
    )
    outputs = loaded.model.generate_batch(prompts, generation_config=generation, continuous_batching_config=batching)
    span_s = max(o.lifespan[1] for o in outputs.values()) - min(o.created_time for o in outputs.values())
    return sum(len(o.generated_tokens) for o in outputs.values()) / span_s


def compare(args) -> int:
    import os

    import torch

    from runner.engine.batching import attach
    from runner.engine.loader import load
    from runner.engine.session import ChatSession
    from runner.engine.types import SamplingParams

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import cpu_plan, cpu_serving, tiny_llama

    clients_list = [c for c in COMPARE_CLIENTS if c <= args.max_clients]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="shardwise-compare-") as workdir:
        model_dir = tiny_llama(Path(workdir), name="bench-llama", **COMPARE_MODEL)
        plan = cpu_plan(model_dir, context_tokens=COMPARE_CONTEXT, max_new_tokens=args.max_tokens)
        loaded = load(plan, log=lambda line: None)
        params = sum(p.numel() for p in loaded.model.parameters())
        session = ChatSession(loaded, defaults=SamplingParams(max_tokens=args.max_tokens, temperature=0), plan=plan)
        name = plan.model.name
        points = {
            c: greedy_cases(max(args.min_requests, c), args.prompt_tokens, args.max_tokens, loaded.tokenizer)
            for c in clients_list
        }
        every = points[clients_list[-1]]
        prompt_ids = [session.fit_prompt(c.messages, args.max_tokens)[0] for c in every]
        raw = raw_generate_tokens_per_s(loaded, prompt_ids[0], args.max_tokens)
        serving = cpu_serving(model_dir, sessions=clients_list[-1], context_tokens=COMPARE_CONTEXT)
        ceiling = generate_batch_tokens_per_s(loaded, serving, prompt_ids, args.max_tokens)
        rows = {}
        for mode in ("sequential", "batched"):
            if mode == "batched":
                attach(loaded, serving, max_waiting=2 * len(every), log=lambda line: None)
            try:
                for clients in clients_list:
                    row = rows[(mode, clients)] = serve_point(session, name, points[clients], clients, args.timeout_s)
                    results = row.pop("results")
                    if mode == "sequential":  # what the batched path must stream, token for token
                        for case, result in zip(points[clients], results):
                            case.expected_text, case.expected_tokens = result.text, result.completion_tokens
            finally:
                if loaded.batching is not None:
                    loaded.batching.close()
                    loaded.batching = None
    load_after = os.getloadavg()
    print(
        f"model: Llama-style, {params / 1e6:.1f}M parameters, float32, sdpa, CPU with {torch.get_num_threads()} "
        f"threads; prompts ~{args.prompt_tokens} tokens, {args.max_tokens} new tokens, greedy, streaming; "
        f"batched = continuous batching sized for {serving.max_concurrent} sessions ({serving.num_blocks} blocks of "
        f"{serving.page_size_tokens} tokens, {serving.max_batch_tokens} tokens per step)"
    )
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min; other agents share the cores)")
    print()
    print(
        "| clients | requests | sequential tok/s | batched tok/s | batched / sequential | batched / generate_batch "
        "| p50 latency s (seq / batched) | p95 latency s (seq / batched) | TTFT p50 s (seq / batched) "
        "| TTFT p95 s (seq / batched) | errors |"
    )
    print("|" + "---|" * 11)
    ok = True
    for clients in clients_list:
        seq, bat = rows[("sequential", clients)], rows[("batched", clients)]
        ok &= seq["errors"] == 0 and bat["errors"] == 0
        print(
            f"| {clients} | {len(points[clients])} | {seq['tokens_per_s']:.0f} | {bat['tokens_per_s']:.0f} "
            f"| {bat['tokens_per_s'] / seq['tokens_per_s']:.2f} | {bat['tokens_per_s'] / ceiling:.2f} "
            f"| {seq['p50']:.2f} / {bat['p50']:.2f} | {seq['p95']:.2f} / {bat['p95']:.2f} "
            f"| {seq['ttft_p50']:.2f} / {bat['ttft_p50']:.2f} | {seq['ttft_p95']:.2f} / {bat['ttft_p95']:.2f} "
            f"| {seq['errors'] + bat['errors']} |"
        )
        for problem in seq["problems"] + bat["problems"]:
            print(f"  problem: {problem}")
    one = rows[("batched", clients_list[0])]["tokens_per_s"]
    print()
    print(f"raw model.generate, one sequence: {raw:.0f} tok/s; batched at 1 client / raw generate: {one / raw:.2f}")
    print(
        "(raw generate and generate_batch run once, before the server points: under a changing load, compare loosely)"
    )
    print(f"transformers generate_batch, {len(every)} requests at once (in-process ceiling): {ceiling:.0f} tok/s")
    print(
        "every batched reply was compared with the sequential path's greedy reply, token for token"
        + ("" if ok else ": MISMATCHES")
    )
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent streaming clients")
    parser.add_argument("--requests", type=int, default=48, help="requests in total")
    parser.add_argument("--max-tokens", type=int, default=24, help="max_tokens per request")
    parser.add_argument("--timeout-s", type=float, default=180.0, help="wall-clock limit for the whole load, seconds")
    parser.add_argument("--compare", action="store_true", help="batched vs sequential vs generate at 1-16 clients")
    parser.add_argument("--max-clients", type=int, default=16, help="--compare: largest client count (1, 4, 8, 16)")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="--compare: prompt length, tokens")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--min-requests", type=int, default=8, help="--compare: requests per point at least")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.compare:
        bounded = 1 <= args.max_clients <= 16 and 8 <= args.prompt_tokens <= 256 and 1 <= args.max_tokens <= 128
        if not (bounded and 1 <= args.min_requests <= 64):
            parser.error(
                "keep it bounded: --max-clients 1-16, --prompt-tokens 8-256, --max-tokens 1-128, --min-requests 1-64"
            )
        return compare(args)
    if not (1 <= args.clients <= 64 and 1 <= args.requests <= 1000 and 1 <= args.max_tokens <= 64):
        parser.error("keep it bounded: 1-64 clients, 1-1000 requests, 1-64 max tokens")

    import logging

    from runner.openai.app import BackgroundServer, ModelSource, ServeSettings, create_app

    logging.getLogger("shardwise.serve").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="shardwise-load-") as workdir:
        session = build_session(Path(workdir), args.max_tokens)
        cases = make_cases(args.requests, args.max_tokens)
        reference_s = fill_references(session, cases)
        name = session.plan.model.name
        app = create_app([ModelSource(name, load=lambda: session)], ServeSettings(max_queue=args.clients))
        with BackgroundServer(app) as server:
            wait_ready(server.url)
            results, health, wall_s = asyncio.run(run_load(server.url, name, cases, args.clients, args.timeout_s))
    return 0 if report(results, health, wall_s, args.clients, reference_s) else 1


if __name__ == "__main__":
    raise SystemExit(main())
