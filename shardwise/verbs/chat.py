"""`shardwise chat [overrides]`: chat with a model from a fresh plan or a reviewed plan.json.

shardwise chat model=gpt2 hardware=cpu                 # interactive REPL (see runner.repl)
shardwise chat model=gpt2 prompt="Hello"               # answer once and exit
shardwise chat model=gpt2 'prompt=[Hello, "And in French?"]'   # several turns of one conversation
echo "Hello" | shardwise chat model=gpt2               # piped stdin is the prompt
shardwise chat plan_file=plan.json                     # run a reviewed plan (refused if hardware changed)
shardwise chat model.path=./my-model use_cpu=true      # any local model directory
"""

from __future__ import annotations

import sys
from pathlib import Path

from planner.config.overrides import flag
from planner.errors import ShardwiseError
from shardwise.verbs.app import run_verb


def _notice(line: str) -> None:
    print(f"shardwise: {line}", file=sys.stderr, flush=True)


def build_plan(cfg):
    """The plan to run: plan_file (checked against this machine) or a fresh one from the composed config."""
    from hydra.core.hydra_config import HydraConfig

    from planner.planfile.plan import Plan

    if cfg.plan_file:
        plan = Plan.load(cfg.plan_file)
        if not flag(cfg, "replan"):
            from runner.engine.loader import check_fresh

            check_fresh(plan, str(cfg.plan_file))
            return plan
        from planner.config.compose import make_plan

        source = plan.model.source
        _notice(f"replan=true: planning {plan.model.name} afresh for this machine")
        if Path(source).exists():
            return make_plan(model_path=source, hardware="auto")
        from planner.model.hub import is_hub_id

        if is_hub_id(source):  # offline and uncached: one line now, before planning measures this machine
            from runner.engine.preflight import check_weights_reachable

            check_weights_reachable(plan)
        return make_plan(model=plan.model.name, hardware="auto")
    from planner.config.request import plan_from_config
    from planner.hardware.tiers import resolve_hardware

    hardware = resolve_hardware(cfg.hardware, name=HydraConfig.get().runtime.choices.get("hardware"))
    return plan_from_config(cfg, hardware)


def max_memory_caps(cfg) -> dict:
    """max_memory={0: 20GiB, cpu: 30GiB} as byte caps; anything but a mapping is a one-line error."""
    from omegaconf import DictConfig, OmegaConf

    from runner.plan_fitting import parse_max_memory

    value = cfg.get("max_memory")
    if value is None:
        return {}
    if not isinstance(value, DictConfig):
        raise ShardwiseError(
            f"max_memory={value!r} is not a per-device mapping: write e.g. 'max_memory={{0: 20GiB, cpu: 30GiB}}'"
        )
    return parse_max_memory(OmegaConf.to_container(value))


def read_prompt(cfg) -> list[str] | None:
    """The turns to answer (prompt=TEXT, prompt='[a, b]' for a conversation, else a piped stdin), None for the REPL."""
    from omegaconf import DictConfig, ListConfig

    prompt = cfg.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read()
    if prompt is None:
        return None
    given = list(prompt) if isinstance(prompt, (ListConfig, list)) else [prompt]
    for number, turn in enumerate(given, 1):
        # a turn is text: a null or a nested list/mapping would reach the model as Python's "None" or "['a']"
        if turn is None or isinstance(turn, (DictConfig, ListConfig, dict, list)):
            what = "null" if turn is None else "a list" if isinstance(turn, (ListConfig, list)) else "a mapping"
            where = f"turn {number} of prompt" if isinstance(prompt, (ListConfig, list)) else "prompt"
            raise ShardwiseError(
                f"{where} is {what}, not text: give each turn as text, quoted when it holds brackets or commas, "
                """e.g. 'prompt=["Hi", "And in French?"]'"""
            )
    turns = [str(turn) for turn in given]
    from runner.engine.prompt import check_unicode

    for turn in turns:  # a byte that was not UTF-8 (argv and stdin decode with surrogateescape): say so before the load
        check_unicode(turn, "the prompt")
    if not turns or not all(turn.strip() for turn in turns):
        raise ShardwiseError('the prompt is empty: pass prompt="..." or pipe text into shardwise chat')
    return turns


def answer_once(session, prompt: str, stream: bool) -> None:
    from runner.repl import stats_line

    if stream:
        text_stream = session.send(prompt, stream=True)
        for delta in text_stream:
            sys.stdout.write(delta)
            sys.stdout.flush()
        completion = text_stream.completion
        sys.stdout.write("\n")
    else:
        completion = session.send(prompt)
        print(completion.text)
    print(stats_line(completion), file=sys.stderr)


def task(cfg):
    from hydra.core.hydra_config import HydraConfig

    from runner.engine.loader import set_runtime_env
    from runner.engine.recovery import RecoveryPolicy, load_with_fallbacks
    from runner.engine.sampling import SamplingParams
    from runner.engine.session import ChatSession
    from runner.engine.telemetry import Telemetry
    from runner.plan_fitting import plan_that_fits

    # Everything the user typed is checked before the (slow) model load.
    defaults = SamplingParams.from_generation(cfg.generation)
    caps = max_memory_caps(cfg)
    stream, metrics_on = flag(cfg, "stream"), flag(cfg, "metrics")
    flag(cfg, "replan")
    prompt = read_prompt(cfg)
    set_runtime_env(cfg.alloc_conf, _notice)  # before anything can touch CUDA
    from runner.engine.preflight import (
        check_model_reachable,
        check_remote_code,
        check_weights_reachable,
    )
    from shardwise.verbs.app import remote_code_consent

    consent = remote_code_consent(cfg)
    # offline and uncached: one line now, before planning measures this machine and torch loads
    checked = not cfg.plan_file and check_model_reachable(cfg.model)
    plan = build_plan(cfg)
    check_remote_code(plan, consent)
    plan = plan_that_fits(plan, notice=_notice, caps=caps)
    check_remote_code(plan, consent)  # a fallback model may ask too
    if not checked or plan.model.source != cfg.model.get("hub_id"):
        check_weights_reachable(plan)
    policy = RecoveryPolicy(remote_code_consent=consent)
    loaded = load_with_fallbacks(plan, policy=policy, notice=_notice)
    metrics = Path(HydraConfig.get().runtime.output_dir) / "metrics.jsonl" if metrics_on else None
    session = ChatSession(
        loaded,
        defaults=defaults,
        plan=loaded.plan,
        system_prompt=cfg.generation.system_prompt,
        recovery=policy,
        on_notice=_notice,
        telemetry=Telemetry(metrics),
    )
    if prompt is not None:
        for turn in prompt:  # one conversation: each turn sees the replies before it
            answer_once(session, turn, stream)
        return
    from runner.repl import Repl

    Repl(session, history_file=cfg.history_file).run()


def run(argv: list[str]) -> None:
    # use_cpu=true is a shortcut for the hardware group choice, which Hydra picks before the task runs.
    argv = list(argv)
    if any(a.lower() in ("use_cpu=true", "use_cpu=1", "use_cpu=yes") for a in argv):
        argv = [a for a in argv if not a.startswith("hardware=")] + ["hardware=cpu"]
    run_verb("chat", "chat", task, argv)
