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

import os
import sys
from collections.abc import Callable

VERBS = {
    "plan": "resolve a model against hardware into an explained plan (dry run)",
    "probe": "show this machine's GPUs (NVML); probe.save=FILE records a snapshot",
    "chat": "interactive chat from a fresh plan or plan_file=plan.json",
    "serve": "OpenAI-compatible /v1/chat/completions on 127.0.0.1, batching concurrent requests",
    "launch": "start a plan on torchrun, SLURM (submitit) or vLLM",
    "calibrate": "measure this machine's speed factors into a snapshot (out=FILE)",
}


def verb_runner(verb: str) -> Callable[[list[str]], None]:
    """The `run(argv)` of one verb, shardwise/verbs/<verb>.py, imported on demand (chat, serve and launch pull in
    torch later, when they load)."""
    if verb not in VERBS:
        raise KeyError(verb)
    from importlib import import_module

    return import_module(f"shardwise.verbs.{verb}").run


def usage() -> str:
    lines = ["usage: shardwise <verb> [hydra overrides]", "", "verbs:"]
    lines += [f"  {verb:<9} {summary}" for verb, summary in VERBS.items()]
    lines += [
        "",
        "examples:",
        "  shardwise plan model=gpt-oss-120b hardware=h100_80gb",
        "  shardwise plan -m model=gpt2,gpt-oss-20b hardware=t4,a100_80gb",
        "  shardwise <verb> --help",
        "",
        "options: -V/--version; --shell-completion install=bash|zsh (tab completion of verbs, groups and keys)",
    ]
    return "\n".join(lines)


def version() -> str:
    from importlib import metadata

    try:
        return metadata.version("shardwise")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


# Tab completion: the shell asks `shardwise -sc query=SHELL` with the line typed so far in COMP_LINE; the
# verb word is completed here, everything after it by that verb's Hydra app (groups, options, keys).
_COMPLETION_SCRIPT = """_shardwise_complete()
{
    local choices
    choices=$(COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" shardwise --shell-completion query=bash 2>/dev/null)
    COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "${COMP_WORDS[COMP_CWORD]}"))
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _shardwise_complete shardwise
"""


def shell_completion(request: str) -> None:
    """`install=bash|zsh` prints the script to eval; `query=bash|zsh` prints the candidates for COMP_LINE."""

    action, _, shell = request.partition("=")
    if action not in ("install", "uninstall", "query") or shell not in ("bash", "zsh"):
        print(f"shardwise: error: --shell-completion {request!r}: use install=bash or install=zsh", file=sys.stderr)
        raise SystemExit(2)
    if action == "install":
        prefix = "autoload -U +X bashcompinit && bashcompinit\n" if shell == "zsh" else ""
        print(prefix + _COMPLETION_SCRIPT, end="")
        return
    if action == "uninstall":
        print("complete -r shardwise 2>/dev/null; unset -f _shardwise_complete")
        return
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    completing_verb = len(words) < 2 or (len(words) == 2 and not line.endswith(" "))
    if completing_verb:
        typed = words[1] if len(words) == 2 else ""
        print(" ".join(verb for verb in VERBS if verb.startswith(typed)))
        return
    verb = words[1]
    if verb not in VERBS:
        return
    # the verb's Hydra app completes what follows the verb, as if it were the program name
    os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]]) + (" " if line.endswith(" ") else "")
    verb_runner(verb)(["--shell-completion", "query=bash"])


def _tolerate_narrow_encodings() -> None:
    """An ASCII-only stdout (PYTHONIOENCODING=ascii, LANG=C) degrades the report to '?' instead of crashing."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure") and (stream.errors or "strict") == "strict":
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):  # a stream that cannot change encoding settings now
                pass


def main(argv: list[str] | None = None) -> None:
    try:
        _main(argv)
    except BrokenPipeError:
        # the reader left (`shardwise plan --help | head`): what it read was printed. stdout now points at
        # /dev/null so the interpreter's last flush does not fail again; 141 is a shell's code for SIGPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None


def program() -> None:
    """The `shardwise` program (console script, `python -m shardwise`, `python -m runner`): `main()`, after which
    a Ctrl+C is ignored. The verb has ended by then (its own interrupts are handled inside it: exit 130); while the
    interpreter shuts down it restores the default SIGINT action, so a late Ctrl+C would otherwise turn a finished
    run into a death by signal. Not in `main()` itself, which a test or script may call in its own process."""
    import signal

    try:
        main()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _main(argv: list[str] | None) -> None:
    _tolerate_narrow_encodings()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if argv else 2)
    if argv[0] in ("-V", "--version"):
        print(f"shardwise {version()}")
        return
    if argv[0] in ("-sc", "--shell-completion") or (len(argv) > 1 and argv[1] in ("-sc", "--shell-completion")):
        flag_at = 0 if argv[0] in ("-sc", "--shell-completion") else 1
        shell_completion(argv[flag_at + 1] if len(argv) > flag_at + 1 else "")
        return
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        from planner.errors import did_you_mean

        hint = did_you_mean(verb, VERBS)  # the rule every unknown name uses: case-insensitive, prefixes first
        print(f"shardwise: error: unknown verb {verb!r}{hint}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    from runner.interrupts import interrupts_end_cleanly

    # from before the verb's module is imported (a second or more for chat and launch): a SIGTERM that early is
    # exit 143 with one line too, not a death by signal
    with interrupts_end_cleanly(f"shardwise {verb}"):
        run = verb_runner(verb)
        if "--help" in rest or "-h" in rest:
            from planner.config.help import verb_help

            print(verb_help(verb, VERBS[verb], sys.modules[run.__module__].__doc__))
            return
        run(rest)


if __name__ == "__main__":
    main()
