"""Tensor and pipeline parallel chats over real torchrun ranks on the CPU (gloo), against one process.

Each test starts `shardwise launch` (or two of them, as two "nodes" on 127.0.0.1); the workers
record the token ids they generated (launch.record_dir) and the test compares them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from cli_runner import free_port, port_was_taken
from tiny_models import cpu_plan, tiny_llama

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def here_plan(llama_dir):
    """A CPU plan for the tiny llama made for this very machine (so plan_file passes the hardware check)."""
    from planner.config.compose import current_hardware

    hw = current_hardware("cpu").to_dict()
    return replace(cpu_plan(llama_dir, max_new_tokens=8), hardware=hw)


def launch(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "shardwise", "launch", *args],
        cwd=cwd,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen, stdin: str = "", timeout: int = 180) -> str:
    out, err = proc.communicate(stdin, timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def records(record_dir: Path) -> dict[int, list[dict]]:
    return {
        int(p.stem[4:]): [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted(record_dir.glob("rank*.jsonl"))
    }


def one_process_greedy(model_dir: Path, input_ids: list[int], max_new_tokens: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([input_ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, len(input_ids) :].tolist()


def test_tensor_parallel_2_gives_the_same_greedy_ids_as_one_process(here_plan, llama_dir, tmp_path):
    plan_file = here_plan.save(tmp_path / "plan.json")
    proc = launch(
        f"plan_file={plan_file}",
        "launch.cpu_tp_size=2",
        f"launch.record_dir={tmp_path}/rec",
        "generation.temperature=0",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    out = finish(proc, stdin="hello world\nwhat is the capital of France?\n")  # two turns typed on rank 0's stdin
    by_rank = records(tmp_path / "rec")
    assert sorted(by_rank) == [0, 1]
    assert [len(turns) for turns in by_rank.values()] == [2, 2]
    assert all(t["tp_size"] == 2 and t["world_size"] == 2 for turns in by_rank.values() for t in turns)
    for turn in by_rank[0]:
        expected = one_process_greedy(llama_dir, turn["input_ids"], 8)
        assert turn["output_ids"] == expected == by_rank[1][turn["turn"]]["output_ids"]
    assert len(out.strip().splitlines()) >= 1  # rank 0 printed the replies


def test_sampled_request_with_a_seed_gives_the_same_ids_on_every_rank(here_plan, tmp_path):
    plan_file = here_plan.save(tmp_path / "plan.json")
    proc = launch(
        f"plan_file={plan_file}",
        "launch.cpu_tp_size=2",
        f"launch.record_dir={tmp_path}/rec",
        "generation.temperature=1.5",
        "generation.seed=1234",
        "launch.prompt=[one two three]",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    finish(proc)
    by_rank = records(tmp_path / "rec")
    assert by_rank[0][0]["seed"] == by_rank[1][0]["seed"] == 1234
    assert by_rank[0][0]["output_ids"] == by_rank[1][0]["output_ids"]
    assert len(by_rank[0][0]["output_ids"]) == 8


def test_two_nodes_on_localhost_with_a_static_master_run_pipeline_stages(here_plan, llama_dir, tmp_path):
    plan = replace(here_plan, strategy="pipeline", nodes=2, pp_size=2, device_map={})
    plan_file = plan.save(tmp_path / "plan.json")
    for attempt in range(3):  # another process may take the free port before torchrun binds it: retry
        port = free_port()
        common = [
            f"plan_file={plan_file}",
            "launch.master_addr=127.0.0.1",
            f"launch.master_port={port}",
            f"launch.record_dir={tmp_path}/rec",
            "generation.temperature=0",
            "launch.prompt=[hello world]",
        ]
        node1 = launch(*common, "launch.node_rank=1", f"hydra.run.dir={tmp_path}/run1", cwd=tmp_path)
        node0 = launch(*common, "launch.node_rank=0", f"hydra.run.dir={tmp_path}/run0", cwd=tmp_path)
        outputs = [proc.communicate(timeout=180) for proc in (node0, node1)]
        if all(proc.returncode == 0 for proc in (node0, node1)):
            break
        text = "".join(out + err for out, err in outputs)
        assert attempt < 2 and port_was_taken(text), text[-3000:]
    by_rank = records(tmp_path / "rec")
    assert sorted(by_rank) == [0, 1]
    turn = by_rank[0][0]
    assert turn["pp_size"] == 2 and turn["world_size"] == 2
    assert turn["output_ids"] == by_rank[1][0]["output_ids"] == one_process_greedy(llama_dir, turn["input_ids"], 8)


def _letters(text: str, start: int, length: int) -> str:
    """The first `length` letters-only characters from `start` on that occur first there (a safe override value)."""
    for at in range(start, len(text) - length + 1):
        piece = text[at : at + length]
        if piece.isalpha() and piece.isascii() and text.find(piece) == at:
            return piece
    raise AssertionError(f"no usable stop string in the reference text {text!r}")


def test_tensor_parallel_rank_and_chat_session_agree_on_chunked_prefill_stops_and_the_context_error(
    here_plan, tmp_path
):
    """Same plan, prompt and seed: the same greedy ids through the TP rank and ChatSession; same context error."""
    from runner.engine.loader import load
    from runner.engine.prompt import ContextLengthError
    from runner.engine.sampling import SamplingParams
    from runner.engine.session import ChatSession

    plan = replace(here_plan, limits=replace(here_plan.limits, context_tokens=64, prefill_chunk_tokens=4))
    first, too_long = "hello world, how are you today?", ("the quick brown fox jumps over the lazy dog " * 8).strip()
    session = ChatSession(
        load(plan, log=lambda line: None),
        defaults=SamplingParams(temperature=0, max_tokens=8),
        plan=plan,
        on_notice=lambda line: None,
    )
    reference = session.generate([{"role": "user", "content": first}])
    stop = _letters(reference.text, 1, 2)
    params = SamplingParams(temperature=0, max_tokens=8, stop=[stop], seed=5)
    expected = session.send(first, params)
    assert expected.finish_reason == "stop" and len(expected.token_ids) < len(reference.token_ids)
    with pytest.raises(ContextLengthError) as too_long_error:
        session.send(too_long, params)

    plan_file = plan.save(tmp_path / "plan.json")
    proc = launch(
        f"plan_file={plan_file}",
        "launch.cpu_tp_size=2",
        f"launch.record_dir={tmp_path}/rec",
        "generation.temperature=0",
        "generation.max_tokens=8",
        "generation.seed=5",
        f"generation.stop=[{stop}]",
        f"launch.prompt=[{first!r},{too_long!r}]",
        f"hydra.run.dir={tmp_path}/run",
        cwd=tmp_path,
    )
    out, err = proc.communicate(timeout=180)
    assert proc.returncode != 0, err[-3000:]  # the second turn cannot fit
    assert f"error: {too_long_error.value}" in err, err[-3000:]
    by_rank = records(tmp_path / "rec")
    assert [len(turns) for turns in by_rank.values()] == [1, 1]
    for turns in by_rank.values():
        assert turns[0]["input_ids"] == session.prompt.encode([{"role": "user", "content": first}])
        assert turns[0]["output_ids"] == expected.token_ids and turns[0]["finish_reason"] == "stop"
    assert out.strip().splitlines()[0] == expected.text.strip()
