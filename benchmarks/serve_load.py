"""Bounded load test of `shardwise serve`: N concurrent streaming clients against a tiny model on loopback.

    .venv/bin/python benchmarks/serve_load.py                       # 8 clients, 48 requests
    .venv/bin/python benchmarks/serve_load.py --clients 16 --requests 64 --max-tokens 32
    .venv/bin/python benchmarks/serve_load.py --compare             # batched vs sequential vs ceilings, 1-16 clients
    .venv/bin/python benchmarks/serve_load.py --compare --peer-python /work/peer-venv/bin/python  # + transformers serve
    .venv/bin/python benchmarks/serve_load.py --abuse               # normal requests while the server is abused

`--compare` builds a ~40M-parameter Llama-style model (random weights) and, at 1, 4, 8 and 16 concurrent
greedy streaming clients, serves it twice through the same server code: with continuous batching
(runner.engine.batching, sized like a plan with 16 sessions) and with the old one-at-a-time path, and
runs transformers' in-process `generate_batch` with the point's requests all at once (the ceiling). At
every point the three run alternately (A, B, C, then C, B, A, ...) --repeats times (default 5), so a
change in the machine's load hits all three alike; each ratio is taken within a repeat and printed as its
median with the range, tok/s as medians. Raw `model.generate` for one sequence (the 1-client target) runs
once before the points. Every streamed reply must equal the sequential
session's greedy reply token for token. A second table is issue 13's 1-client target: one streaming client
on a fresh server, before and after it answered non-streaming requests, next to raw generate.
With `--peer-python PY` (an environment with `transformers[serving]`; this venv lacks fastapi), the same
model directory, prompts, max_tokens, greedy settings, torch threads and cache sizes are also served by
`transformers serve` and `transformers serve --continuous-batching` on 127.0.0.1 (benchmarks/serve_peer.py),
one after the other, as more columns and ratios of the same tables; their greedy texts are compared with
shardwise's and the matches counted (reported, never an error). Here the shardwise server shares the load
generator's process (and torch was imported before the serve runtime's environment was set); for the alternated
side-by-side of the real `shardwise serve` process with `transformers serve --continuous-batching`, use
serve_versus.py.

`--abuse` serves a tiny model with continuous batching (4 slots, serve.max_queue=4) and times a normal
small request (8 greedy tokens, non-streaming) just before, during and right after each of: (a) a
3000-message conversation sent twice at once, answered with max_tokens=1 (what fitting it costs) and
asking for 1500 tokens, abandoned by its client after 0.1 s; (b) a burst of twice slots + max_queue
requests at once (the excess must get 429, never 5xx); (c) streaming clients that read 3 chunks, stop,
then hang up (the server must stop them: /metrics running back to 0, none counted as finished). One
table: the ratios to the local unloaded latency (target <= 2x), the abusive requests' outcomes, /health
answered throughout. Exits 1 on a 5xx, a step after which no normal request was answered, work the server
did not stop, or a /health failure.

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
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(REPO / "tests") not in sys.path:  # the test helpers: tiny models, fakes, the background server
    sys.path.insert(0, str(REPO / "tests"))

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


async def one_request(
    client, url: str, model: str, case: Case, limit: asyncio.Semaphore, checker=check_stream
) -> Result:
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
    problem, text, tokens, _ = checker(events, case)
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
    url: str, model: str, cases: list[Case], clients: int, timeout_s: float, checker=check_stream
) -> tuple[list[Result], HealthLog, float]:
    """All cases through `clients` concurrent streams; (results, health log, wall seconds).

    `checker(events, case)` reads one stream (check_stream: shardwise's, with [DONE]; serve_peer's for
    transformers serve)."""
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
                asyncio.gather(*(one_request(client, url, model, c, limit, checker) for c in cases)), timeout=timeout_s
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


def warm_up(url: str, model: str, cases: list[Case], timeout_s: float) -> None:
    """Two short non-streaming requests (the issue's slow state came after those)."""
    import httpx

    for case in cases[:2]:
        body = {**case.body(model), "stream": False, "max_tokens": 8}
        body.pop("stream_options")
        httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout_s).raise_for_status()


def serve_point(session, name: str, cases: list[Case], clients: int, timeout_s: float) -> dict:
    """One server, two non-streaming warm-up requests, then the load."""
    from background_server import BackgroundServer

    from runner.openai.app import ModelSource, ServeSettings, create_app

    app = create_app([ModelSource(name, load=lambda: session)], ServeSettings(max_queue=2 * len(cases)))
    with BackgroundServer(app) as server:
        wait_ready(server.url)
        warm_up(server.url, name, cases, timeout_s)
        results, _, wall_s = asyncio.run(run_load(server.url, name, cases, clients, timeout_s))
    return summarize(results, wall_s)


def unchecked(cases: list[Case]) -> list[Case]:
    """Copies that carry no reference: a peer's replies are compared afterwards, never counted as errors."""
    return [replace(case, expected_text=None, expected_tokens=None) for case in cases]


def peer_point(peer, cases: list[Case], clients: int, timeout_s: float) -> dict:
    """serve_point against a running transformers serve; `matches`: replies equal to shardwise's sequential text."""
    from serve_peer import check_peer_stream

    warm_up(peer.url, peer.model, cases, timeout_s)
    results, _, wall_s = asyncio.run(
        run_load(peer.url, peer.model, unchecked(cases), clients, timeout_s, check_peer_stream)
    )
    row = summarize(results, wall_s)
    row["matches"] = sum(r.ok and r.text == c.expected_text for r, c in zip(row["results"], cases))
    return row


def one_client_before_after(url: str, model: str, cases: list[Case], timeout_s: float, checker=check_stream) -> dict:
    """At 1 streaming client: tok/s of `cases` streamed on a fresh server, then after 3 non-streaming requests.

    The issue's slow state showed only after the server had answered a non-streaming request."""
    import httpx

    before, _, before_s = asyncio.run(run_load(url, model, unchecked(cases), 1, timeout_s, checker))
    for case in cases[:3]:
        body = {**case.body(model), "stream": False}
        body.pop("stream_options")
        httpx.post(url + "/v1/chat/completions", json=body, timeout=timeout_s).raise_for_status()
    after, _, after_s = asyncio.run(run_load(url, model, unchecked(cases), 1, timeout_s, checker))
    first, second = summarize(before, before_s), summarize(after, after_s)
    return {
        "before": first["tokens_per_s"],
        "after": second["tokens_per_s"],
        "errors": first["errors"] + second["errors"],
    }


def shardwise_one_client(session, name: str, cases: list[Case], timeout_s: float) -> dict:
    from background_server import BackgroundServer

    from runner.openai.app import ModelSource, ServeSettings, create_app

    app = create_app([ModelSource(name, load=lambda: session)], ServeSettings(max_queue=2 * len(cases)))
    with BackgroundServer(app) as server:
        wait_ready(server.url)
        return one_client_before_after(server.url, name, cases, timeout_s)


def peer_agreement(peer, cases: list[Case], clients: int, timeout_s: float) -> int:
    """How many of `cases`, asked non-streaming (the server decodes the whole reply at once), equal shardwise's
    sequential greedy text: a streamed reply's text can differ by how partial UTF-8 bytes were cut."""
    import httpx

    async def ask(client, case, limit) -> bool:
        body = {**case.body(peer.model), "stream": False}
        body.pop("stream_options")
        async with limit:
            response = await client.post(peer.url + "/v1/chat/completions", json=body)
        return response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == case.expected_text

    async def run() -> int:
        limit = asyncio.Semaphore(clients)
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            return sum(await asyncio.gather(*(ask(client, case, limit) for case in cases)))

    return asyncio.run(run())


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


PEER_MODES = (("transformers serve", "serve", False), ("transformers CB", "CB", True))  # label, short, batching


def compare(args) -> int:
    import os

    import torch

    from runner.engine.batching import attach
    from runner.engine.loader import load
    from runner.engine.session import ChatSession
    from runner.engine.types import SamplingParams

    sys.path.insert(0, str(REPO / "tests"))
    sys.path.insert(0, str(REPO / "benchmarks"))
    from serve_peer import PeerServer, check_peer_stream, peer_versions
    from tiny_models import cpu_plan, cpu_serving, tiny_llama

    clients_list = [c for c in COMPARE_CLIENTS if c <= args.max_clients]
    peer_modes = PEER_MODES if args.peer_python else ()
    versions = peer_versions(args.peer_python) if args.peer_python else ""
    threads_lines, agreement, single = [], {}, {}
    load_before = os.getloadavg()
    started = time.perf_counter()
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
        alone = points[clients_list[0]]  # the 1-client phase's requests
        rows = {}
        for clients in clients_list:  # at every point: sequential, batched and the ceiling, alternated, repeated
            runs = {"sequential": [], "batched": [], "ceiling": []}
            for repeat in range(args.repeats):
                order = ["sequential", "batched", "ceiling"]
                for mode in order if repeat % 2 == 0 else order[::-1]:
                    if mode == "ceiling":
                        ids = [session.fit_prompt(c.messages, args.max_tokens)[0] for c in points[clients]]
                        runs[mode].append(
                            {"tokens_per_s": generate_batch_tokens_per_s(loaded, serving, ids, args.max_tokens)}
                        )
                        continue
                    if mode == "batched":
                        attach(loaded, serving, max_waiting=2 * len(every), log=lambda line: None)
                    try:
                        row = serve_point(session, name, points[clients], clients, args.timeout_s)
                    finally:
                        if loaded.batching is not None:
                            loaded.batching.close()
                            loaded.batching = None
                    results = row.pop("results")
                    if mode == "sequential" and repeat == 0:  # what every later run must stream, token for token
                        for case, result in zip(points[clients], results):
                            case.expected_text, case.expected_tokens = result.text, result.completion_tokens
                    runs[mode].append(row)
            for mode, got in runs.items():
                rows[(mode, clients)] = got
        for mode in ("sequential", "batched"):  # issue 13's 1-client table: once per mode, after the points
            if mode == "batched":
                attach(loaded, serving, max_waiting=2 * len(every), log=lambda line: None)
            try:
                single[mode] = {"raw": raw_generate_tokens_per_s(loaded, prompt_ids[0], args.max_tokens)}
                single[mode].update(shardwise_one_client(session, name, alone, args.timeout_s))
            finally:
                if loaded.batching is not None:
                    loaded.batching.close()
                    loaded.batching = None
        for label, _, batching in peer_modes:  # one at a time: they never compete with each other for the cores
            peer = PeerServer(
                args.peer_python,
                model_dir,
                continuous_batching=batching,
                threads=args.threads,
                serving=serving,
                log_dir=Path(workdir),
            )
            with peer:
                threads_lines.append(f"{label}: {peer.threads_line()}")
                single[label] = {"raw": raw_generate_tokens_per_s(loaded, prompt_ids[0], args.max_tokens)}
                single[label].update(
                    one_client_before_after(peer.url, peer.model, alone, args.timeout_s, check_peer_stream)
                )
                for clients in clients_list:  # a peer runs once per point, after shardwise's: compare loosely
                    rows[(label, clients)] = [peer_point(peer, points[clients], clients, args.timeout_s)]
                    rows[(label, clients)][0].pop("results")
                agreement[label] = peer_agreement(peer, every, clients_list[-1], args.timeout_s)
    load_after = os.getloadavg()
    print(
        f"model: Llama-style, {params / 1e6:.1f}M parameters, float32, sdpa, CPU with {torch.get_num_threads()} "
        f"threads; prompts ~{args.prompt_tokens} tokens, {args.max_tokens} new tokens, greedy, streaming; "
        f"batched = continuous batching sized for {serving.max_concurrent} sessions ({serving.num_blocks} blocks of "
        f"{serving.page_size_tokens} tokens, {serving.max_batch_tokens} tokens per step)"
    )
    if peer_modes:
        print(
            f"peer: {versions} from {args.peer_python}, `transformers serve MODEL_DIR --device cpu --dtype float32 "
            f"--attn-implementation sdpa` on 127.0.0.1, plain and with --continuous-batching (the same cache sizes: "
            f"--cb-block-size {serving.page_size_tokens} --cb-num-blocks {serving.num_blocks} --cb-max-batch-tokens "
            f"{serving.max_batch_tokens}), one after the other; {'; '.join(threads_lines)}"
        )
    print(
        f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min; other agents share the cores); "
        f"the run took {time.perf_counter() - started:.0f} s"
    )
    print()
    ok = compare_table(rows, clients_list, points, [label for label, _, _ in peer_modes], args.repeats)
    print()
    print(
        f"raw model.generate, one sequence: {raw:.0f} tok/s (once, before the points); generate_batch with "
        f"{len(every)} requests at once, before the points: {ceiling:.0f} tok/s. The table's ceiling column is "
        "generate_batch with each point's own requests, alternated with the two server paths"
    )
    print(
        "every batched reply was compared with the sequential path's greedy reply, token for token"
        + ("" if ok else ": MISMATCHES")
    )
    for label, _, _ in peer_modes:
        streamed = sum(rows[(label, c)]["matches"] for c in clients_list)
        print(
            f"{label}: streamed text equal to shardwise's sequential greedy text in {streamed} of "
            f"{sum(len(points[c]) for c in clients_list)} replies; asked non-streaming (one decode of the whole "
            f"reply), {agreement[label]} of {len(every)} prompts"
        )
    print()
    single_table(single, len(alone))
    return 0 if ok else 1


def _mid(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _spread(values: list[float]) -> str:
    """Median [min-max] of repeated runs."""
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def compare_table(rows: dict, clients_list: list[int], points: dict, peers: list[str], repeats: int) -> bool:
    """The side-by-side table, medians of the alternated repeats with their range; True when no shardwise reply had
    an error or differed from the sequential one.

    Ratios are taken within a repeat (batched and sequential ran back to back, under the same load) and their
    median and range printed; tok/s columns are medians over the repeats."""
    short = {"sequential": "seq", "batched": "batched", **{label: s for label, s, _ in PEER_MODES}}
    modes = ["sequential", "batched", *peers]
    names = " / ".join(short[m] for m in modes)
    ratios = ["batched / sequential", "batched / generate_batch", *(f"batched / {p}" for p in reversed(peers))]
    header = ["clients", "requests", "runs", *(f"{m} tok/s" for m in modes), "generate_batch tok/s"]
    header += [f"{r} median [min-max]" for r in ratios]
    header += [f"{what} s ({names})" for what in ("p50 latency", "p95 latency", "TTFT p50", "TTFT p95")]
    header += ["errors"]
    header += [f"greedy text = shardwise ({' / '.join(short[p] for p in peers)})"] if peers else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    ok = True
    for clients in clients_list:
        row = {m: rows[(m, clients)] for m in modes}
        ceiling = rows[("ceiling", clients)]
        batched = [run["tokens_per_s"] for run in row["batched"]]
        ok &= all(run["errors"] == 0 for m in ("sequential", "batched") for run in row[m])
        cells = [str(clients), str(len(points[clients])), str(repeats)]
        cells += [f"{_mid(row[m], 'tokens_per_s'):.0f}" for m in modes] + [f"{_mid(ceiling, 'tokens_per_s'):.0f}"]
        cells.append(_spread([b / s["tokens_per_s"] for b, s in zip(batched, row["sequential"])]))
        cells.append(_spread([b / c["tokens_per_s"] for b, c in zip(batched, ceiling)]))
        for p in reversed(peers):  # a peer ran once: against the batched median
            cells.append(f"{statistics.median(batched) / row[p][0]['tokens_per_s']:.2f}")
        for key in ("p50", "p95", "ttft_p50", "ttft_p95"):
            cells.append(" / ".join(f"{_mid(row[m], key):.2f}" for m in modes))
        cells.append(str(sum(run["errors"] for m in modes for run in row[m])))
        if peers:
            cells.append(" / ".join(f"{row[p][0]['matches']}/{len(points[clients])}" for p in peers))
        print("| " + " | ".join(cells) + " |")
        for m in modes:
            for problem in {problem for run in row[m] for problem in run["problems"]}:
                print(f"  problem ({m}): {problem}")
    return ok


def single_table(single: dict, requests: int) -> None:
    """Issue 13's 1-client target: streaming within 10% of raw generate, also after non-streaming requests."""
    print(
        f"1 streaming client, {requests} requests on a fresh server, then {min(3, requests)} non-streaming "
        f"requests, then the same {requests} again (raw generate measured in-process just before each server):"
    )
    print(
        "| server | raw generate tok/s | streaming tok/s before | after non-streaming | before / raw | after / raw "
        "| errors |"
    )
    print("|" + "---|" * 7)
    for mode, got in single.items():
        label = f"shardwise {mode}" if mode in ("sequential", "batched") else mode
        print(
            f"| {label} | {got['raw']:.0f} | {got['before']:.0f} | {got['after']:.0f} "
            f"| {got['before'] / got['raw']:.2f} | {got['after'] / got['raw']:.2f} | {got['errors']} |"
        )


# ----- --abuse: normal requests while the server is abused ---------------------------------------------

ABUSE_CONTEXT = 2048  # the tiny model's context: room for long generations that a hang-up must cut short
ABUSE_LONG_TOKENS = 1500  # max_tokens of the abandoned and hung-up requests
NORMAL_BODY = {"messages": [{"role": "user", "content": "hello, how are you?"}], "max_tokens": 8, "temperature": 0}


@dataclass
class Step:
    """Normal requests timed in one window (before, during or after an abuse), and what the abusive requests got."""

    name: str
    latencies: list = field(default_factory=list)  # answered normal requests, seconds
    normal_statuses: list = field(default_factory=list)  # HTTP status (or exception name) of each normal request
    abuse: dict = field(default_factory=dict)  # outcome -> count for the abusive requests of this step
    note: str = ""
    problems: list = field(default_factory=list)  # what the server got wrong in this step
    refused_s: list = field(default_factory=list)  # seconds until a normal request got its 429


def _outcome(status) -> str:
    if isinstance(status, str):
        return status  # "abandoned", "hung up mid-stream" or an exception name
    if 200 <= status < 300:
        return "2xx"
    return "429" if status == 429 else "5xx" if status >= 500 else str(status)


async def normal_requests(client, url: str, model: str, step: Step, count: int) -> None:
    """`count` small non-streaming requests one after another, each timed."""
    for _ in range(count):
        start = time.perf_counter()
        try:
            response = await client.post(url + "/v1/chat/completions", json={**NORMAL_BODY, "model": model})
            status = response.status_code
        except Exception as exc:  # a transport failure is counted, not a crash of the benchmark
            status = type(exc).__name__
        step.normal_statuses.append(status)
        if status == 200:
            step.latencies.append(time.perf_counter() - start)
        elif status == 429:
            step.refused_s.append(time.perf_counter() - start)


async def metric(client, url: str, name: str) -> float:
    """A /metrics series summed over its labels (models, reasons)."""
    text = (await client.get(url + "/metrics", timeout=5)).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f"shardwise:{name}{{"))


async def running_requests(client, url: str) -> float:
    return await metric(client, url, "num_requests_running")


async def wait_idle(client, url: str, limit_s: float) -> float | None:
    """Seconds until /metrics shows no running request, None if it never did within `limit_s`."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit_s:
        if await running_requests(client, url) == 0:
            return time.perf_counter() - start
        await asyncio.sleep(0.05)
    return None


def huge_conversation(messages: int) -> list[dict]:
    """`messages` turns of "hi", alternating, the last one the user's."""
    return [{"role": ("user", "assistant")[(messages - 1 - i) % 2], "content": "hi"} for i in range(messages)]


async def abuse_huge(client, url, model, args, during: Step, after: Step) -> None:
    """(a) a conversation of thousands of short messages, sent twice at once: answered in full with one new
    token (what fitting it costs the server) and asking for many tokens, abandoned by its client after
    `abandon_s`. Normal requests are timed while both are in the server."""
    import httpx

    body = {
        "model": model,
        "messages": huge_conversation(args.abuse_messages),
        "max_tokens": ABUSE_LONG_TOKENS,
        "temperature": 0,
    }
    finished_before = await metric(client, url, "request_success_total")
    start = time.perf_counter()
    took = {}

    async def huge(name: str, timeout: float | None, max_tokens: int):
        try:
            response = await client.post(
                url + "/v1/chat/completions", json={**body, "max_tokens": max_tokens}, timeout=timeout
            )
            took[name] = time.perf_counter() - start
            return response.status_code
        except httpx.TimeoutException:
            return "abandoned"
        except Exception as exc:
            return type(exc).__name__

    tasks = [
        asyncio.create_task(huge("full", 30.0, 1)),
        asyncio.create_task(huge("abandoned", args.abandon_s, ABUSE_LONG_TOKENS)),
    ]
    await asyncio.sleep(0.05)  # the bodies are on their way: the server is reading or fitting them
    await normal_requests(client, url, model, during, args.abuse_normal)
    full, abandoned = await asyncio.gather(*tasks)
    for status in (full, abandoned):
        during.abuse[_outcome(status)] = during.abuse.get(_outcome(status), 0) + 1
    during.note = f"{len(json.dumps(body)) // 1024} KB body; with max_tokens=1 answered {full}"
    during.note += f" in {took['full']:.2f} s" if "full" in took else ""
    if "abandoned" in took:
        during.note += f"; the other was not abandoned: answered in {took['abandoned']:.2f} s"
    idle = await wait_idle(client, url, 20.0)
    finished = await metric(client, url, "request_success_total") - finished_before
    finished -= len(during.latencies) + (full == 200)
    after.note = "running back to 0 " + (f"in {idle:.2f} s" if idle is not None else "NEVER (20 s)")
    if abandoned == "abandoned":  # request_success_total counts only requests that ran to their end
        after.note += "; the abandoned request " + ("ran to its end anyway" if finished else "was stopped")
        if finished:
            after.problems.append("the abandoned request was not cancelled")
    await normal_requests(client, url, model, after, args.abuse_normal)


async def abuse_burst(client, url, model, args, capacity: int, during: Step, after: Step) -> None:
    """(b) more requests at once than the server holds (batch slots + serve.max_queue): the rest must get 429."""
    count = args.abuse_burst or 2 * capacity
    body = {**NORMAL_BODY, "model": model, "max_tokens": 32}

    async def one():
        try:
            return (await client.post(url + "/v1/chat/completions", json=body)).status_code
        except Exception as exc:
            return type(exc).__name__

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    await asyncio.sleep(0.1)
    await normal_requests(client, url, model, during, args.abuse_normal)
    for status in await asyncio.gather(*tasks):
        during.abuse[_outcome(status)] = during.abuse.get(_outcome(status), 0) + 1
    during.note = f"{count} at once against {capacity} places (a normal request may get 429 too)"
    await normal_requests(client, url, model, after, args.abuse_normal)


async def abuse_disconnect(client, url, model, args, slots: int, during: Step, after: Step) -> None:
    """(c) streaming clients that hang up mid-stream.

    Each stream reads 3 chunks and then stops reading; once they all generate, normal requests are timed
    (during), then every client hangs up. The server must stop them all: /metrics shows no running request
    soon after, and request_success_total (requests that ran to their end) counts none of them. Fewer
    streams than batch slots (checked by main): the normal requests measure interference, not a wait for a
    slot (a stream whose client stops reading still generates to its end, holding its slot meanwhile).
    """
    body = {**NORMAL_BODY, "model": model, "max_tokens": ABUSE_LONG_TOKENS, "stream": True}
    generating = args.abuse_streams
    started = asyncio.Event()
    hang_up = asyncio.Event()
    begun = 0

    async def one():
        nonlocal begun
        try:
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    return response.status_code
                chunks = 0
                async for line in response.aiter_lines():
                    chunks += line.startswith("data: ")
                    if chunks == 3:
                        begun += 1
                        if begun >= generating:
                            started.set()
                        await hang_up.wait()
                        return "hung up mid-stream"  # leaving the block closes the connection
                return "finished"
        except Exception as exc:
            return type(exc).__name__

    finished_before = await metric(client, url, "request_success_total")
    tasks = [asyncio.create_task(one()) for _ in range(args.abuse_streams)]
    try:
        await asyncio.wait_for(started.wait(), timeout=20.0)
    except asyncio.TimeoutError:
        during.note = f"only {begun} of {generating} streams started in 20 s; "
    await normal_requests(client, url, model, during, args.abuse_normal)
    hang_up.set()
    await asyncio.sleep(0.05)
    for task in tasks:  # still waiting for a batch slot: hang up by dropping the connection
        task.cancel()
    for status in await asyncio.gather(*tasks, return_exceptions=True):
        status = "hung up while queued" if isinstance(status, asyncio.CancelledError) else status
        during.abuse[_outcome(status)] = during.abuse.get(_outcome(status), 0) + 1
    idle = await wait_idle(client, url, 20.0)
    finished = await metric(client, url, "request_success_total") - finished_before - len(during.latencies)
    after.note = "running back to 0 " + (f"in {idle:.2f} s" if idle is not None else "NEVER (20 s)")
    after.note += f"; {finished:.0f} of the {args.abuse_streams} streams ran to their end"
    if finished:
        after.problems.append(f"{finished:.0f} hung-up stream(s) were not cancelled")
    await normal_requests(client, url, model, after, args.abuse_normal)


@dataclass
class AbuseRow:
    """One abuse: normal requests just before it (the local unloaded baseline), during it and right after it."""

    name: str
    before: Step
    during: Step
    after: Step
    health_answered: int = 0
    health_failed: int = 0
    load: float = 0.0  # 1-min load average when the abuse began (other processes share the cores)


async def run_abuse(url: str, model: str, args, slots: int) -> tuple[list[AbuseRow], HealthLog, bool]:
    """Each abuse with normal requests before, during and after it; (rows, /health log, nothing running at the end).

    The baseline is measured again right before every abuse: the cores are shared, and a baseline from
    minutes earlier would turn the machine's drift into a ratio.
    """
    import os

    import httpx

    health = HealthLog()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=16)
    rows = []
    async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
        await normal_requests(client, url, model, Step("warm-up"), 2)  # first-request costs out of the baseline
        poller = asyncio.create_task(poll_health(client, url, stop, health))
        try:
            for name, abuse in (
                (f"(a) {args.abuse_messages}-message conversation, abandoned after {args.abandon_s:g} s", abuse_huge),
                ("(b) burst past the queue", lambda *a: abuse_burst(*a[:4], slots + args.abuse_queue, *a[4:])),
                (
                    f"(c) {args.abuse_streams} streaming clients hang up mid-stream",
                    lambda *a: abuse_disconnect(*a[:4], slots, *a[4:]),
                ),
            ):
                row = AbuseRow(name, Step("before"), Step("during"), Step("after"), load=os.getloadavg()[0])
                await normal_requests(client, url, model, row.before, args.abuse_unloaded)
                answered, failed = health.answered, health.failed
                await abuse(client, url, model, args, row.during, row.after)
                row.health_answered, row.health_failed = health.answered - answered, health.failed - failed
                rows.append(row)
            idle = await running_requests(client, url) == 0
        finally:
            stop.set()
            await poller
    return rows, health, idle


def _p50(step: Step) -> float:
    import statistics

    return statistics.median(step.latencies) if step.latencies else float("nan")


def abuse_table(rows: list[AbuseRow], health: HealthLog, idle: bool) -> bool:
    """Print the side-by-side table; True when no 5xx, every abuse was followed by an answered normal request,
    the server stopped abandoned work, and /health stayed ok."""
    print(
        "| abuse | unloaded p50 s (just before) | during p50 s | after p50 s | during / unloaded | after / unloaded "
        "| <= 2x | normal answered (during; after) | abusive requests | /health ok | load | notes |"
    )
    print("|" + "---|" * 12)
    ok = True
    for row in rows:
        base = _p50(row.before)
        ratios = [_p50(step) / base for step in (row.during, row.after) if step.latencies]
        normals = []
        for step in (row.during, row.after):
            others = [str(s) for s in step.normal_statuses if s != 200]
            normals.append(
                f"{len(step.latencies)}/{len(step.normal_statuses)}" + (f" ({', '.join(others)})" if others else "")
            )
        abusive = ", ".join(f"{k}: {v}" for k, v in sorted(row.during.abuse.items())) or "-"
        refused = row.during.refused_s
        if refused:
            row.during.note += f"; normal requests refused with 429 in {max(refused) * 1000:.0f} ms at most"
        notes = "; ".join(n.strip("; ") for n in (row.during.note, row.after.note) if n.strip("; "))
        health_ok = row.health_failed == 0 and row.health_answered > 0
        print(
            f"| {row.name} | {base:.3f} | {_p50(row.during):.3f} | {_p50(row.after):.3f} "
            f"| {_p50(row.during) / base:.2f} | {_p50(row.after) / base:.2f} "
            f"| {'yes' if ratios and max(ratios) <= 2.0 else 'no'} | {'; '.join(normals)} | {abusive} "
            f"| {'yes' if health_ok else 'NO'} ({row.health_answered}/{row.health_answered + row.health_failed}) "
            f"| {row.load:.1f} | {notes} |"
        )
        fives = sum(
            1
            for st in (row.before, row.during, row.after)
            for s in st.normal_statuses
            if isinstance(s, int) and s >= 500
        )
        fives += row.during.abuse.get("5xx", 0)
        problems = row.during.problems + row.after.problems
        ok &= fives == 0 and health_ok and not problems and "NEVER" not in notes
        ok &= bool(row.before.latencies) and bool(row.after.latencies)  # answered after the abuse
        for problem in problems:
            print(f"  problem in {row.name}: {problem}")
    print()
    print(
        f"/health during the whole phase: {health.answered} answered 200, {health.failed} failed "
        f"({', '.join(health.failures[:3]) or 'none'}), slowest {health.slowest_s * 1000:.0f} ms; "
        f"requests running at the end: {'0' if idle else 'SOME'}"
    )
    return ok and health.failed == 0 and idle


def measure_abuse(args) -> dict:
    """Serve the tiny model with continuous batching on loopback, run the abuse steps against it, stop the server.

    Returns rows (AbuseRow), health (HealthLog), idle (nothing running at the end), slots, batching (bool),
    load_before / load_after (1-min load average) and seconds (the phase, server start to stop).
    """
    import logging
    import os

    from background_server import BackgroundServer

    from runner.engine.batching import attach
    from runner.engine.loader import load
    from runner.engine.session import ChatSession
    from runner.engine.types import SamplingParams
    from runner.openai.app import ModelSource, ServeSettings, create_app

    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import cpu_plan, cpu_serving, tiny_llama

    logging.getLogger("shardwise.serve").setLevel(logging.ERROR)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="shardwise-abuse-") as workdir:
        model_dir = tiny_llama(Path(workdir), max_position_embeddings=ABUSE_CONTEXT)
        plan = cpu_plan(model_dir, context_tokens=ABUSE_CONTEXT, max_new_tokens=ABUSE_LONG_TOKENS)
        loaded = load(plan, log=lambda line: None)
        session = ChatSession(loaded, defaults=SamplingParams(max_tokens=8), plan=plan, on_notice=lambda line: None)
        engine = attach(
            loaded,
            cpu_serving(model_dir, sessions=args.abuse_slots, context_tokens=ABUSE_CONTEXT),
            max_waiting=args.abuse_queue,
            log=lambda line: None,
        )
        slots = engine.admission.slots if engine is not None else 1
        settings = ServeSettings(max_queue=args.abuse_queue, request_timeout_s=60.0)
        app = create_app([ModelSource(plan.model.name, load=lambda: session)], settings)
        started = time.perf_counter()
        try:
            with BackgroundServer(app) as server:
                wait_ready(server.url)
                rows, health, idle = asyncio.run(
                    asyncio.wait_for(run_abuse(server.url, plan.model.name, args, slots), args.timeout_s)
                )
        finally:
            if loaded.batching is not None:
                loaded.batching.close()
    return {
        "rows": rows,
        "health": health,
        "idle": idle,
        "slots": slots,
        "batching": engine is not None,
        "load_before": load_before[0],
        "load_after": os.getloadavg()[0],
        "seconds": time.perf_counter() - started,
    }


def abuse(args) -> int:
    """--abuse: measure, then print the table; exit status 1 when the server got something wrong."""
    result = measure_abuse(args)
    batching, slots = result["batching"], result["slots"]
    print(
        f"tiny Llama-style model (random weights), CPU, {'continuous batching' if batching else 'sequential'} with "
        f"{slots} slots, serve.max_queue={args.abuse_queue}; normal request: 1 short message, 8 new tokens, greedy, "
        f"non-streaming, one after another: {args.abuse_unloaded} just before each abuse, "
        f"{args.abuse_normal} during and {args.abuse_normal} after it"
    )
    print(
        f"load average before {result['load_before']:.2f}, after {result['load_after']:.2f} (1 min); "
        f"phase took {result['seconds']:.1f} s"
    )
    print()
    ok = abuse_table(result["rows"], result["health"], result["idle"])
    print("PASS: no 5xx, normal requests answered after every abuse, /health ok" if ok else "FAIL")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--repeats", type=int, default=5, help="--compare: alternated runs of each path at every point (median, range)"
    )
    parser.add_argument(
        "--peer-python",
        help="--compare: also serve the model with `transformers serve` (plain and --continuous-batching) from "
        "this Python, which has transformers[serving] (e.g. /work/peer-venv/bin/python)",
    )
    abuse_group = parser.add_argument_group("--abuse: normal requests while the server is abused")
    abuse_group.add_argument("--abuse", action="store_true", help="huge conversation, burst past the queue, hang-ups")
    abuse_group.add_argument("--abuse-messages", type=int, default=3000, help="messages in the huge conversation")
    abuse_group.add_argument("--abandon-s", type=float, default=0.1, help="the huge request's client gives up after, s")
    abuse_group.add_argument("--abuse-burst", type=int, default=0, help="burst size (0: twice slots + max_queue)")
    abuse_group.add_argument("--abuse-streams", type=int, default=3, help="streaming clients that hang up")
    abuse_group.add_argument("--abuse-slots", type=int, default=4, help="continuous-batching slots (plan sessions)")
    abuse_group.add_argument("--abuse-queue", type=int, default=4, help="serve.max_queue")
    abuse_group.add_argument("--abuse-unloaded", type=int, default=5, help="normal requests for the unloaded median")
    abuse_group.add_argument("--abuse-normal", type=int, default=3, help="normal requests in each window")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.abuse:
        sizes = (args.abuse_burst, args.abuse_streams, args.abuse_slots, args.abuse_queue)
        bounded = 1 <= args.abuse_messages <= 20000 and 0.05 <= args.abandon_s <= 10 and max(sizes) <= 64
        if not (bounded and min(sizes[1:]) >= 1 and 1 <= args.abuse_unloaded <= 20 and 1 <= args.abuse_normal <= 20):
            parser.error(
                "keep it bounded: --abuse-messages 1-20000, --abandon-s 0.05-10, burst/streams/slots/queue up to 64, "
                "--abuse-unloaded and --abuse-normal 1-20"
            )
        if args.abuse_streams >= args.abuse_slots:
            parser.error(
                "--abuse-streams must be below --abuse-slots: one batch slot stays free for the normal requests "
                "(streams in every slot make them wait for a slot, which measures the queue, not the hang-ups)"
            )
        return abuse(args)
    if args.peer_python and not args.compare:
        parser.error("--peer-python goes with --compare")
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

    from background_server import BackgroundServer

    from runner.openai.app import ModelSource, ServeSettings, create_app

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
