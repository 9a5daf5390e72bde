"""`shardwise <verb> [hydra overrides]`: the one entry point.

    shardwise plan model=gpt-oss-120b hardware=h100_80gb   # dry-run plan, writes plan.json
    shardwise probe                                        # what this machine has (NVML)
    shardwise chat | serve | launch                        # run a plan (runner)

Each verb is a Hydra app with its own primary config in conf/; `--help`, `--cfg job`, `--info`
and `-m` work. Verbs are looked up by module path so that `shardwise plan` imports neither
torch nor transformers nor the runner.
"""

from __future__ import annotations

import importlib
import sys

VERBS = {
    # verb: (module with run(argv), one-line summary)
    "plan": ("planner.plan_cli", "resolve a model against hardware into an explained plan (dry run)"),
    "probe": ("planner.probe_cli", "show this machine's GPUs (NVML); probe.save=FILE records a snapshot"),
    "chat": ("runner.chat_cli", "interactive chat from a fresh plan or plan_file=plan.json"),
    "serve": ("runner.serve_cli", "OpenAI-compatible /v1/chat/completions on 127.0.0.1"),
    "launch": ("runner.launch_cli", "start a plan on torchrun, SLURM (submitit) or vLLM"),
}


def usage() -> str:
    lines = ["usage: shardwise <verb> [hydra overrides]", "", "verbs:"]
    lines += [f"  {verb:<7} {summary}" for verb, (_, summary) in VERBS.items()]
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
    module = importlib.import_module(VERBS[verb][0])
    module.run(rest)


if __name__ == "__main__":
    main()
