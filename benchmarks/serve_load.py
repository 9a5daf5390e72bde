"""Bounded load test of `shardwise serve`: N concurrent streaming clients against a tiny model on loopback.

    .venv/bin/python benchmarks/serve_load.py                       # 8 clients, 48 requests
    .venv/bin/python benchmarks/serve_load.py --clients 16 --requests 64 --max-tokens 32

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
    seed: int
    max_tokens: int
    expected_text: str | None = None
    expected_tokens: int | None = None

    def body(self, model: str) -> dict:
        return {
            "model": model,
            "messages": self.messages,
            "max_tokens": self.max_tokens,
            "temperature": 1.0,
            "seed": self.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
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
            case.messages, SamplingParams(max_tokens=case.max_tokens, temperature=1.0, seed=case.seed)
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
    result.completion_tokens = tokens
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
        f"clients {clients}, requests {len(results)}, complete and identical to reference {len(done)}, errors {len(errors)} (mixed {sum(r.mixed for r in results)})"
    )
    print(
        f"latency s: p50 {percentile(latencies, 0.5):.3f}  p95 {percentile(latencies, 0.95):.3f}  max {max(latencies, default=float('nan')):.3f}"
    )
    print(
        f"time to first token s (queue wait included): p50 {percentile(ttfts, 0.5):.3f}  p95 {percentile(ttfts, 0.95):.3f}"
    )
    print(
        f"throughput: {tokens} completion tokens in {wall_s:.2f} s = {tokens / wall_s:.1f} tokens/s, {len(done) / wall_s:.2f} requests/s"
    )
    if reference_s is not None:
        print(f"sequential reference through the session directly: {reference_s:.2f} s")
    print(
        f"/health during the load: {health.answered} answered 200, {health.failed} failed, slowest {health.slowest_s * 1000:.0f} ms"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent streaming clients")
    parser.add_argument("--requests", type=int, default=48, help="requests in total")
    parser.add_argument("--max-tokens", type=int, default=24, help="max_tokens per request")
    parser.add_argument("--timeout-s", type=float, default=180.0, help="wall-clock limit for the whole load, seconds")
    args = parser.parse_args(argv)
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
