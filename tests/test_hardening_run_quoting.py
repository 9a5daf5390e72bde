"""Values as typed (issue 18, items 9 and 10): an escaped `\\${x}` reaches a prompt, a system prompt, serve.api_key or
a path as the text `${x}` (resolved once, never twice), and every value in a rendered command or dry-run comment is
quoted, so hostile paths, prompts starting with `-` and SLURM values parse back exactly and never run as code."""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import replace

import pytest
from cli_runner import shardwise
from tiny_models import cpu_plan, tiny_gpt2

from planner.config.compose import compose
from planner.config.quoting import hydra_literal, override
from planner.config.schema import LaunchSettings, LaunchTask, SlurmSettings, typed_block

HOSTILE = ["a,b", "k=v", "it's", "[x]", "-x --help", "${x}", "\\${y}", 'q"uote', "sp ace", "tr\\", "naïve", "a\nb"]


def parsed_value(word: str):
    """What Hydra and OmegaConf make of one `key=value` override: the value a config read returns."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    value = OverridesParser.create().parse_override(word).value()
    return OmegaConf.to_container(OmegaConf.create({"v": value}), resolve=True)["v"]


@pytest.mark.parametrize("text", HOSTILE)
def test_an_override_written_by_shardwise_parses_back_to_the_value(text):
    assert parsed_value(override("key", text)) == text
    assert parsed_value(f"key={hydra_literal([text, 'plain'])}") == [text, "plain"]


def test_plain_values_stay_readable():
    assert override("plan_file", "plan.json") == "plan_file=plan.json"
    assert override("model", "gpt2") == "model=gpt2"
    assert override("x", "null") == 'x="null"' and override("x", "12") == 'x="12"'


def test_escaped_interpolations_are_resolved_once(monkeypatch):
    monkeypatch.setenv("SHARDWISE_TEST_SECRET", "leaked")
    cfg = compose(
        "chat",
        [r"prompt=\${x}", r"generation.system_prompt=\${oc.env:SHARDWISE_TEST_SECRET}", r"generation.stop=[\${z}]"],
    )
    assert cfg.prompt == "${x}"
    assert cfg.generation.system_prompt == "${oc.env:SHARDWISE_TEST_SECRET}"
    assert list(cfg.generation.stop) == ["${z}"]
    launch = compose("launch", [r"launch.prompt=[\${x}]"])
    assert typed_block(LaunchSettings, launch.launch).prompt == ["${x}"]


def test_serve_api_key_is_the_typed_text_or_the_resolved_variable(monkeypatch):
    from shardwise.verbs.serve import settings_from_config

    monkeypatch.setenv("SHARDWISE_TEST_KEY", "from-env")
    assert settings_from_config(compose("serve", [r"serve.api_key=\${x}"]))[0].api_key == "${x}"
    # an interpolation the user meant is resolved (it was handed on as its own text before)
    meant = compose("serve", ["serve.api_key=${oc.env:SHARDWISE_TEST_KEY}"])
    assert settings_from_config(meant)[0].api_key == "from-env"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return tiny_gpt2(tmp_path_factory.mktemp("models"))


def test_a_plan_file_path_with_an_escaped_interpolation_is_the_path_typed(tmp_path):
    result = shardwise("chat", r"plan_file=\${x}/plan.json", "prompt=hi", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "${x}/plan.json" in result.stderr.strip().splitlines()[-1]


def test_rendered_commands_quote_every_value(gpt2):
    from runner.launch import render as L
    from runner.launch.worker import parse_args

    path = "/tmp/a,b=c'[d] e/plan.json"
    settings = LaunchSettings(prompt=["-x --help", "${x}"], task=LaunchTask.chat)
    generation = {"stop": ["-s", "a,b"], "system_prompt": "--sys", "max_tokens": 5}
    plan = cpu_plan(gpt2)
    command = L.single_process_command(plan, path, settings, generation)
    words = shlex.split(command.line())
    assert words == list(command.argv)
    values = dict(w.split("=", 1) for w in words[2:])
    assert parsed_value(f"plan_file={values['plan_file']}") == path
    assert parsed_value(f"prompt={values['prompt']}") == ["-x --help", "${x}"]
    assert parsed_value(f"s={values['generation.stop']}") == ["-s", "a,b"]
    assert parsed_value(f"s={values['generation.system_prompt']}") == "--sys"
    # the torchrun worker: values beginning with "-" stay values
    args = parse_args(L.worker_args(path, settings, generation))
    assert (args.plan, args.prompt, args.stop) == (path, ["-x --help", "${x}"], ["-s", "a,b"])
    assert args.system_prompt == "--sys"


def test_slurm_overrides_quote_values_with_commas_and_spaces():
    from runner.launch import render as L

    config, _ = L.slurm_config(1, 2, replace(SlurmSettings(), partition="gpu,debug", account="my team"), name="a=b")
    line = L.shell_line(L.slurm_overrides(config))
    words = shlex.split(line)
    values = {w.split("=", 1)[0]: parsed_value(w) for w in words[1:]}
    assert values["hydra.launcher.partition"] == "gpu,debug"
    assert values["hydra.launcher.account"] == "my team"
    assert values["hydra.launcher.name"] == "a=b"


@pytest.mark.slow
def test_a_dry_run_for_a_model_directory_named_with_a_newline_runs_no_second_command(gpt2, tmp_path):
    import shutil

    evil = tmp_path / "m,x=y'[z\ntouch PWNED"
    shutil.copytree(gpt2, evil)
    result = shardwise(
        "launch",
        f'model.path="{evil}"',
        "hardware=cpu",
        "launch.dry_run=true",
        r"launch.prompt=[-x --help, \${x}]",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    commands = [line for line in script.splitlines() if not line.startswith("#")]
    assert len(commands) == 1 and commands[0].startswith("shardwise chat ")
    # run it with `shardwise` as a shell function that records its arguments: nothing else runs
    ran = subprocess.run(
        ["bash", "-c", 'shardwise() { printf "%s\\n" "$@" > args.txt; }\n' + script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr
    assert not (tmp_path / "PWNED").exists()
    args = (tmp_path / "args.txt").read_text().splitlines()
    prompt = next(a for a in args if a.startswith("prompt="))
    assert parsed_value(prompt) == ["-x --help", "${x}"]


@pytest.mark.parametrize(
    "prompt, needle",
    [
        ([None], "turn 1 of prompt is null"),
        (["a", ["b"]], "turn 2 of prompt is a list"),
        (["a", {"b": "c"}], "turn 2 of prompt is a mapping"),
        ({"a": "b"}, "prompt is a mapping"),
        (["caf\udcff"], "the prompt holds '\\udcff' at character 3"),  # before the load, not after it
    ],
)
def test_a_prompt_turn_that_is_not_text_is_one_line_not_pythons_repr(prompt, needle):
    """`prompt=[null]` or `prompt={a: b}` reached the model as the text "None" or "{'a': 'b'}"."""
    from omegaconf import OmegaConf

    from planner.errors import ShardwiseError
    from shardwise.verbs.chat import read_prompt

    with pytest.raises(ShardwiseError) as caught:
        read_prompt(OmegaConf.create({"prompt": prompt}))
    assert str(caught.value).startswith(needle) and "\n" not in str(caught.value)
    assert read_prompt(OmegaConf.create({"prompt": ["Hi", 42, "-x"]})) == ["Hi", "42", "-x"]
