"""benchmarks/serve_load.py's checks, run small against the fake session: they pass on a correct
server and catch replies that do not match their request's sequential reference."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
from pathlib import Path

import httpx
from background_server import BackgroundServer
from server_fakes import FakeSession

from runner.openai.app import ModelSource, ServeSettings, create_app

_spec = importlib.util.spec_from_file_location(
    "serve_load", Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
)
serve_load = importlib.util.module_from_spec(_spec)
sys.modules["serve_load"] = serve_load  # dataclasses look their module up there
_spec.loader.exec_module(serve_load)


class UnseededSession(FakeSession):
    """Ignores the request's seed, as a server that shares one RNG between requests would."""

    def _words(self, messages, params):
        rng = random.Random()
        return (rng.choice(["x", "y", "z"]) for _ in range(10**6))


def run_small(session, clients: int = 4, requests: int = 12):
    cases = serve_load.make_cases(requests, 6)
    serve_load.fill_references(FakeSession(), cases)
    app = create_app([ModelSource("fake", load=lambda: session)], ServeSettings(max_queue=clients))
    with BackgroundServer(app) as server:
        serve_load.wait_ready(server.url)
        results, health, wall_s = asyncio.run(serve_load.run_load(server.url, "fake", cases, clients, 60))
        assert httpx.get(server.url + "/health").status_code == 200
    return results, health, wall_s


def test_concurrent_streams_are_complete_and_match_their_sequential_reference(capsys):
    results, health, wall_s = run_small(FakeSession(token_delay_s=0.005))
    assert [r.problem for r in results if not r.ok] == []
    assert all(r.completion_tokens == 6 and r.ttft_s is not None and r.ttft_s <= r.latency_s for r in results)
    assert health.answered >= 1 and health.failed == 0
    assert serve_load.report(results, health, wall_s, 4, None)
    out = capsys.readouterr().out
    assert "clients 4, requests 12, complete and identical to reference 12, errors 0 (mixed 0)" in out


def test_replies_that_ignore_their_seed_are_reported_as_mixed(capsys):
    results, health, wall_s = run_small(UnseededSession(), clients=2, requests=4)
    assert sum(r.mixed for r in results) == 4
    assert not serve_load.report(results, health, wall_s, 2, None)
    assert "mixed 4" in capsys.readouterr().out
