"""`shardwise <verb> [hydra overrides]`: the one entry point.

    shardwise plan model=gpt-oss-120b hardware=h100_80gb   # dry-run plan, writes plan.json
    shardwise probe                                        # what this machine has (NVML)
    shardwise chat | serve | launch                        # run a plan (runner)

Each verb is a Hydra app with its own primary config in conf/; `--help`, `--cfg job`, `--info`
and `-m` work. The dispatcher sits above both packages (the planner never imports the runner);
each verb's module is imported only when that verb runs, so `shardwise plan` loads neither
torch nor transformers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

VERBS = {
    "plan": "resolve a model against hardware into an explained plan (dry run)",
    "probe": "show this machine's GPUs (NVML); probe.save=FILE records a snapshot",
    "chat": "interactive chat from a fresh plan or plan_file=plan.json",
    "serve": "OpenAI-compatible /v1/chat/completions on 127.0.0.1",
    "launch": "start a plan on torchrun, SLURM (submitit) or vLLM",
    "calibrate": "measure this machine's speed factors into a snapshot (out=FILE)",
}


def verb_runner(verb: str) -> Callable[[list[str]], None]:
    """The `run(argv)` of one verb, imported on demand (chat, serve and launch pull in torch later, when they load)."""
    if verb == "plan":
        from planner import plan_cli

        return plan_cli.run
    if verb == "probe":
        from planner import probe_cli

        return probe_cli.run
    if verb == "chat":
        from runner import chat_cli

        return chat_cli.run
    if verb == "serve":
        from runner.openai import serve_cli

        return serve_cli.run
    if verb == "launch":
        from runner.launch import verb as launch_verb

        return launch_verb.run
    if verb == "calibrate":
        from runner import calibrate

        return calibrate.run
    raise KeyError(verb)


def usage() -> str:
    lines = ["usage: shardwise <verb> [hydra overrides]", "", "verbs:"]
    lines += [f"  {verb:<9} {summary}" for verb, summary in VERBS.items()]
    lines += [
        "",
        "examples:",
        "  shardwise plan model=gpt-oss-120b hardware=h100_80gb",
        "  shardwise plan -m model=gpt2,gpt-oss-20b hardware=t4,a100_80gb",
        "  shardwise <verb> --help",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"shardwise: error: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    verb_runner(verb)(rest)


if __name__ == "__main__":
    main()
