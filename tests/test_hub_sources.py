"""Any model by hub id or local directory: `model=ORG/NAME` through a fake hub on 127.0.0.1, the HF cache offline.

Each test runs `shardwise plan` in a subprocess whose HF_ENDPOINT is tests/fake_hub.py's server and
whose HF_HOME is under tmp_path, so nothing outside 127.0.0.1 and the test's directory is touched.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub, llama_repo_files, tensor_bytes

REPO_ID = "org/tiny-llama"


def plan(*args: str, env: dict, cwd: Path, out: Path | None = None) -> tuple[subprocess.CompletedProcess, dict | None]:
    out = out or cwd / "plan.json"
    out.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "runner", "plan", "hardware=h100_80gb", f"out={out}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result, json.loads(out.read_text()) if result.returncode == 0 else None


def reasons(plan_dict: dict) -> str:
    return "\n".join(d["reason"] for d in plan_dict["decisions"])


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("shardwise plan: error: ")
    return lines[0]


def hf_download(env: dict, *args: str) -> None:
    """The real `hf download` CLI, as a user fills the cache."""
    hf = Path(sys.executable).with_name("hf")
    result = subprocess.run([str(hf), "download", *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def sharded():
    files = llama_repo_files(num_layers=3, shards=2)
    hub = FakeHub()
    sha = hub.add(REPO_ID, files)
    with hub:
        yield hub, files, sha


def test_a_hub_id_plans_from_config_and_safetensors_headers_without_downloading_weights(sharded, tmp_path):
    hub, files, sha = sharded
    result, p = plan(f"model={REPO_ID}", env=hub.env(tmp_path / "hf"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert p["model"]["checkpoint_bytes"] == tensor_bytes(files)
    assert (p["model"]["name"], p["model"]["source"], p["model"]["revision"]) == (REPO_ID, REPO_ID, sha)
    assert p["model"]["num_layers"] == 3 and p["fits"]
    assert f"config.json from the hub (revision {sha})" in reasons(p)
    assert "tensor table from the safetensors headers, read by range requests from the hub" in reasons(p)
    assert hub.weight_reads() == []
    assert not list((tmp_path / "hf").rglob("*.safetensors")), "weights landed in the HF cache"
    assert "HTTP Request" not in result.stdout  # the HTTP client's INFO log stays off stdout


@pytest.mark.slow
def test_a_second_plan_comes_from_the_cache_with_the_hub_gone(sharded, tmp_path):
    hub, files, sha = sharded
    first, _ = plan(f"model={REPO_ID}", env=hub.env(tmp_path / "hf"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    hub.stop()
    offline, p = plan(f"model={REPO_ID}", env=hub.env(tmp_path / "hf", HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert p["model"]["checkpoint_bytes"] == tensor_bytes(files) and p["model"]["revision"] == sha
    assert f"config.json from the HF cache (revision {sha}; HF_HUB_OFFLINE is set)" in reasons(p)
    assert "tensor table from the safetensors headers, cached from the hub" in reasons(p)
    # No HF_HUB_OFFLINE, but nothing answers: one refused connection, then the cache.
    unreachable, p = plan(f"model={REPO_ID}", env=hub.env(tmp_path / "hf"), cwd=tmp_path)
    assert unreachable.returncode == 0, unreachable.stderr
    assert "Retrying" not in unreachable.stdout + unreachable.stderr  # huggingface_hub's backoff would sleep 23 s
    assert "is unreachable" in reasons(p) and p["model"]["checkpoint_bytes"] == tensor_bytes(files)


def test_a_config_only_cache_entry_plans_offline_with_computed_bytes(sharded, tmp_path):
    hub, files, sha = sharded
    hf_download(hub.env(tmp_path / "hf"), REPO_ID, "--include", "config.json")
    hub.stop()
    result, p = plan(f"model={REPO_ID}", env=hub.env(tmp_path / "hf", HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert p["model"]["revision"] == sha and p["model"]["num_layers"] == 3
    assert "tensor table not in the HF cache: bytes computed from config.json" in reasons(p)
    # float16 shipped, every tensor sized from the architecture: the same bytes the headers hold
    assert p["model"]["checkpoint_bytes"] == tensor_bytes(files)


@pytest.mark.slow
def test_a_full_download_in_the_cache_plans_from_the_real_file_headers(sharded, tmp_path):
    hub, files, _ = sharded
    hf_download(hub.env(tmp_path / "hf"), REPO_ID)
    hub.stop()
    result, p = plan(f"model={REPO_ID}", env=hub.env(tmp_path / "hf", HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "tensor table from the safetensors headers of the files in the HF cache" in reasons(p)
    assert p["model"]["checkpoint_bytes"] == tensor_bytes(files)


@pytest.mark.slow
def test_an_absent_model_fails_fast_in_one_line_offline_and_without_network(tmp_path):
    hub = FakeHub()  # never started: its endpoint is a closed port
    baseline = time.perf_counter()
    assert plan("model=gpt2", env=hub.env(tmp_path / "hf"), cwd=tmp_path)[0].returncode == 0
    profile_s = time.perf_counter() - baseline
    for extra, why in (({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"), ({}, "is unreachable")):
        start = time.perf_counter()
        result, _ = plan("model=org/absent", env=hub.env(tmp_path / "hf", **extra), cwd=tmp_path)
        elapsed = time.perf_counter() - start
        line = one_line_error(result)
        assert "org/absent is not in the HF cache" in line and why in line
        assert "hf download org/absent --include config.json" in line
        # < 2 s on an idle machine; a loaded one slows both alike. Retries would sleep 1+2+4+8+8 s.
        assert elapsed < max(2.0, 2 * profile_s), f"{elapsed:.2f} s to fail ({profile_s:.2f} s for a profile plan)"
        assert "Retrying" not in result.stdout + result.stderr


def test_a_gated_repo_says_a_token_is_needed(tmp_path):
    hub = FakeHub()
    hub.add("org/gated", llama_repo_files(), gated=True)
    with hub:
        anonymous, _ = plan("model=org/gated", env=hub.env(tmp_path / "hf"), cwd=tmp_path)
        with_token = hub.env(tmp_path / "hf", HF_TOKEN="hf_no_access")
        with_token.pop("HF_HUB_DISABLE_IMPLICIT_TOKEN")
        denied, _ = plan("model=org/gated", env=with_token, cwd=tmp_path)
    for result in (anonymous, denied):
        line = one_line_error(result)
        assert "org/gated is a gated repo" in line and "HF_TOKEN" in line
    assert [r.path for r in hub.requests if "gated" in r.path] == ["/org/gated/resolve/main/config.json"] * 2


def test_an_unknown_hub_id_and_an_unknown_revision_are_one_line_each(sharded, tmp_path):
    hub, _, _ = sharded
    missing, _ = plan("model=org/missing", env=hub.env(tmp_path / "hf"), cwd=tmp_path)
    assert "org/missing is not on the hub" in one_line_error(missing)
    bad_rev, _ = plan(f"model={REPO_ID}", "model.revision=v9", env=hub.env(tmp_path / "hf"), cwd=tmp_path)
    assert "model.revision=v9 does not exist in org/tiny-llama" in one_line_error(bad_rev)


@pytest.mark.slow
def test_model_revision_pins_a_commit_online_and_offline(tmp_path):
    hub = FakeHub()
    old = hub.add(REPO_ID, llama_repo_files(num_layers=2), ref="v1")
    new = hub.add(REPO_ID, llama_repo_files(num_layers=4), ref="main")
    with hub:
        env = hub.env(tmp_path / "hf")
        pinned, p_old = plan(f"model={REPO_ID}", "model.revision=v1", env=env, cwd=tmp_path)
        latest, p_new = plan(f"model={REPO_ID}", env=env, cwd=tmp_path)
    assert pinned.returncode == 0 and latest.returncode == 0, pinned.stderr + latest.stderr
    assert (p_old["model"]["revision"], p_old["model"]["num_layers"]) == (old, 2)
    assert (p_new["model"]["revision"], p_new["model"]["num_layers"]) == (new, 4)
    offline = hub.env(tmp_path / "hf", HF_HUB_OFFLINE="1")
    for revision, sha, layers in (("v1", old, 2), (old, old, 2), ("main", new, 4)):
        result, p = plan(f"model={REPO_ID}", f"model.revision={revision}", env=offline, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (p["model"]["revision"], p["model"]["num_layers"]) == (sha, layers)


@pytest.mark.slow
def test_a_local_directory_plans_by_model_and_by_model_path(tmp_path):
    files = llama_repo_files(num_layers=2)
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    for name, blob in files.items():
        (model_dir / name).write_bytes(blob)
    env = FakeHub().env(tmp_path / "hf", HF_HUB_OFFLINE="1")
    for args in (["model=./my-model"], [f"model={model_dir / 'config.json'}"], [f"model.path={model_dir}"]):
        result, p = plan(*args, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (p["model"]["name"], p["model"]["source"]) == ("my-model", str(model_dir.resolve()))
        assert p["model"]["checkpoint_bytes"] == tensor_bytes(files)
        assert p["model"]["revision"] is None


@pytest.mark.slow
def test_a_sweep_mixes_a_profile_a_hub_id_and_a_directory(sharded, tmp_path):
    hub, files, _ = sharded
    model_dir = tmp_path / "local-llama"
    model_dir.mkdir()
    for name, blob in llama_repo_files(num_layers=1).items():
        (model_dir / name).write_bytes(blob)
    result = subprocess.run(
        [sys.executable, "-m", "runner", "plan", "-m", f"model=gpt2,{REPO_ID},./local-llama", "hardware=h100_80gb"],
        cwd=tmp_path,
        env=hub.env(tmp_path / "hf"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    names = {json.loads(p.read_text())["model"]["name"] for p in tmp_path.glob("multirun/**/plan.json")}
    assert names == {"gpt2", REPO_ID, "local-llama"}


def test_planning_a_hub_id_from_the_cache_imports_neither_torch_nor_transformers(sharded, tmp_path):
    hub, _, _ = sharded
    env = hub.env(tmp_path / "hf")
    assert plan(f"model={REPO_ID}", env=env, cwd=tmp_path)[0].returncode == 0
    code = (
        "import sys\n"
        "from planner.config.compose import make_plan\n"
        f"make_plan({REPO_ID!r}, 'h100_80gb')\n"
        "print([m for m in ('torch', 'transformers', 'accelerate', 'runner') if m in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_openaichat_and_create_chat_completion_take_a_local_directory(tmp_path, monkeypatch):
    from tiny_models import tiny_llama

    from runner.api import OpenAIChat, create_chat_completion

    tiny_llama(tmp_path, name="my-chat")
    monkeypatch.chdir(tmp_path)
    chat = OpenAIChat(model="./my-chat", use_cpu=True, notice=lambda line: None)
    assert chat.session.plan.model.source == str((tmp_path / "my-chat").resolve())
    assert isinstance(chat.chat([{"role": "user", "content": "hi"}], max_tokens=2), str)
    reply = create_chat_completion(
        model="./my-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2, use_cpu=True
    )
    assert reply["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.slow
def test_openaichat_takes_any_hub_id_and_loads_it_from_the_hub(tmp_path):
    from tiny_models import tiny_llama

    model_dir = tiny_llama(tmp_path, name="chat-src")
    hub = FakeHub()
    sha = hub.add("org/chat", {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()})
    code = (
        "from runner import OpenAIChat\n"
        "chat = OpenAIChat(model='org/chat', use_cpu=True)\n"
        "print(chat.session.plan.model.source, chat.session.plan.model.revision)\n"
        "print(type(chat.chat([{'role': 'user', 'content': 'hi'}], max_tokens=2)).__name__)\n"
    )
    with hub:
        result = subprocess.run(
            [sys.executable, "-c", code], env=hub.env(tmp_path / "hf"), cwd=tmp_path, capture_output=True, text=True
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["org/chat", sha, "str"]


def test_launch_renders_a_hub_plan_with_its_id_and_revision(sharded, tmp_path):
    hub, _, sha = sharded
    result = subprocess.run(
        [sys.executable, "-m", "runner", "launch", f"model={REPO_ID}", "hardware=h100_80gb"]
        + ["launch.engine=vllm", "launch.dry_run=true"],
        cwd=tmp_path,
        env=hub.env(tmp_path / "hf"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"vllm serve {REPO_ID} --served-model-name={REPO_ID}" in result.stdout
    assert f"--revision={sha}" in result.stdout


def test_side_files_are_read_and_a_repo_without_safetensors_plans_from_config(tmp_path):
    files = llama_repo_files()
    side = {
        "config.json": files["config.json"],
        "generation_config.json": b'{"temperature": 0.6}',
        "hf_quant_config.json": b'{"producer": {"name": "modelopt"}, "quantization": {"quant_algo": null}}',
    }
    hub = FakeHub()
    hub.add("org/no-weights", side)
    code = (
        "from omegaconf import OmegaConf\n"
        "from planner.config.schema import ModelConfig\n"
        "from planner.model.source import spec_from_config\n"
        "spec = spec_from_config(OmegaConf.structured(ModelConfig(name='org/no-weights', hub_id='org/no-weights')))\n"
        "print(spec.generation_config, spec.hf_quant_config['producer'], spec.model_dir)\n"
        "print([p[2] for p in spec.provenance])\n"
    )
    with hub:
        env = hub.env(tmp_path / "hf")
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first, second = result.stdout.strip().splitlines()
    assert first == "{'temperature': 0.6} {'name': 'modelopt'} None"
    assert "generation_config.json from the hub" in second and "hf_quant_config.json from the hub" in second
    assert "the repo has no safetensors files: bytes computed from config.json" in second
    # the answer "no safetensors" is cached too: offline, the same plan without asking again
    offline, p = plan("model=org/no-weights", env={**env, "HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert offline.returncode == 0, offline.stderr
    assert "the repo has no safetensors files" in reasons(p) and p["model"]["checkpoint_bytes"] == tensor_bytes(files)
