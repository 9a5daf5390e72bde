"""Tensor and pipeline parallel chats over real torchrun ranks on the CPU (gloo), against one process.

Each test starts `shardwise launch` (or two of them, as two "nodes" on 127.0.0.1); the workers
record the token ids they generated (launch.record_dir) and the test compares them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
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
        [sys.executable, "-m", "runner", "launch", *args],
        cwd=cwd,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(proc: subprocess.Popen, stdin: str = "", timeout: int = 60) -> str:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    finish(node0)
    finish(node1)
    by_rank = records(tmp_path / "rec")
    assert sorted(by_rank) == [0, 1]
    turn = by_rank[0][0]
    assert turn["pp_size"] == 2 and turn["world_size"] == 2
    assert turn["output_ids"] == by_rank[1][0]["output_ids"] == one_process_greedy(llama_dir, turn["input_ids"], 8)
