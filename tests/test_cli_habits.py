"""CLI habits people expect: --version, a verb's --help built from conf/ comments, tab completion for bash and zsh."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from shardwise.cli import VERBS


def shardwise(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shardwise", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_flag_prints_the_installed_version(flag):
    from importlib import metadata

    result = shardwise(flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"shardwise {metadata.version('shardwise')}"


def test_plan_help_says_what_the_verb_does_with_examples_groups_and_keys():
    result = shardwise("plan", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.startswith("usage: shardwise plan")
    assert VERBS["plan"] in text
    assert "  shardwise plan model=gpt-oss-120b hardware=h100_80gb" in text  # an example from the verb's docstring
    assert "hardware     [auto]" in text and "h100_80gb" in text
    # the meaning of a key comes from its comment in conf/policy/default.yaml
    assert "policy.context_tokens" in text and "or auto: the largest that fits" in text
    assert "out " in text and "json " in text
    # plan does not compose the probe group; of launch it takes the engine the plan is for (issue 20)
    assert "probe." not in text
    assert "launch.engine" in text and "launch.gpu_memory_utilization" in text


def test_serve_help_lists_the_serve_keys_with_their_defaults():
    text = shardwise("serve", "--help").stdout
    assert "serve.port" in text and "TCP port to listen on (default: 8000)" in text
    assert "serve.host" in text and "127.0.0.1" in text


def test_help_anywhere_after_the_verb_prints_the_help_and_runs_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "shardwise", "plan", "model=gpt2", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: shardwise plan")
    assert not (tmp_path / "outputs").exists()


def _query(line: str) -> list[str]:
    result = shardwise("--shell-completion", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_completion_offers_verbs_then_groups_options_and_keys():
    assert _query("shardwise pl") == ["plan"]
    assert set(_query("shardwise ")) == set(VERBS)
    assert "hardware=h100_80gb" in _query("shardwise plan hardware=h1")
    assert "policy.context_tokens=" in _query("shardwise plan policy.con")
    assert "serve.port=" in _query("shardwise serve serve.p")


def test_completion_install_for_an_unknown_shell_is_one_line_and_exit_2():
    result = shardwise("--shell-completion", "install=fish")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "install=bash" in result.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_tab_completes_through_the_installed_script(tmp_path):
    """The script `shardwise plan --shell-completion install=bash` prints completes a typed line in a real bash."""
    wrapper = tmp_path / "shardwise"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m runner "$@"\n')
    wrapper.chmod(0o755)
    script = shardwise("plan", "--shell-completion", "install=bash").stdout
    assert "complete -o nospace -o default -F _shardwise_complete shardwise" in script
    probe = (
        f"{script}\n"
        'COMP_LINE="shardwise plan hardware=h1"; COMP_POINT=${#COMP_LINE}\n'
        "COMP_WORDS=(shardwise plan hardware=h1); COMP_CWORD=2\n"
        '_shardwise_complete; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert "hardware=h100_80gb" in result.stdout.split()


def test_zsh_install_script_loads_bash_completion_first():
    script = shardwise("--shell-completion", "install=zsh").stdout
    assert script.startswith("autoload -U +X bashcompinit && bashcompinit")
    assert "_shardwise_complete" in script
