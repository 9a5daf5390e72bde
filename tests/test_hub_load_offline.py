"""Running a hub model whose snapshot is in the HF cache, with no network and no HF_HUB_OFFLINE (issue 10):
the runner loads the exact snapshot the plan was made from, so transformers never tries the network (no
"Retrying in 8s" lines, no minute-long wait)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub
from tiny_models import tiny_llama

pytestmark = pytest.mark.slow

REPO_ID = "org/tiny-chat"


def _repo_files(model_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}


def _hf_download(env: dict, *args: str) -> None:
    hf = Path(sys.executable).with_name("hf")
    result = subprocess.run([str(hf), "download", *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _chat(env: dict, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "shardwise", "chat", f"model={REPO_ID}", "hardware=cpu", "prompt=hi"]
        + ["generation.max_tokens=3", "generation.temperature=0"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    return result, time.perf_counter() - start


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """HF caches filled by the real `hf download` from a fake hub that is then stopped: a full download, one
    without the tokenizer, one with config.json alone. Returns (model_dir, sha, {kind: HF_HOME}, closed env)."""
    root = tmp_path_factory.mktemp("hub-load")
    model_dir = tiny_llama(root / "build")
    hub = FakeHub()
    sha = hub.add(REPO_ID, _repo_files(model_dir))
    homes = {kind: root / kind for kind in ("full", "no-tokenizer", "config-only")}
    with hub:
        _hf_download(hub.env(homes["full"]), REPO_ID)
        _hf_download(hub.env(homes["no-tokenizer"]), REPO_ID, "--include", "config.json", "model.safetensors")
        _hf_download(hub.env(homes["config-only"]), REPO_ID, "--include", "config.json")
        closed = hub.env(homes["full"])  # the same URL, a closed port once the hub stops
    return model_dir, sha, homes, closed


def test_a_cached_hub_model_loads_from_its_snapshot_with_the_hub_unreachable(caches, tmp_path):
    _, sha, homes, closed = caches
    assert "HF_HUB_OFFLINE" not in closed and closed["HF_HOME"] == str(homes["full"])
    result, seconds = _chat(closed, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "Retrying" not in result.stderr and "Connection refused" not in result.stderr, result.stderr
    assert f"from the HF cache, {homes['full']}" in result.stderr and f"snapshots/{sha}" in result.stderr
    assert seconds < 60  # before: 5 retries per file, about two minutes


@pytest.mark.parametrize(
    "kind,revision,expected",
    [
        ("full", "sha", "snapshot"),
        ("full", "main", None),  # a branch may have moved: only a commit is loaded without asking
        ("no-tokenizer", "sha", None),
        ("config-only", "sha", None),  # the weights must still come from the hub
    ],
)
def test_only_a_complete_cached_commit_is_loaded_from_its_directory(caches, monkeypatch, kind, revision, expected):
    from dataclasses import replace

    from huggingface_hub import constants
    from tiny_models import cpu_plan

    from runner.engine.loader import local_source

    model_dir, sha, homes, _ = caches
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(homes[kind] / "hub"))
    plan = cpu_plan(model_dir)
    plan = replace(plan, model=replace(plan.model, source=REPO_ID, revision=sha if revision == "sha" else revision))
    snapshot = homes[kind] / "hub" / "models--org--tiny-chat" / "snapshots" / sha
    assert local_source(plan) == (str(snapshot) if expected else None)
