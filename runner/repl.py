"""The interactive chat loop behind `shardwise chat`: streaming replies, slash commands, history.

Type a message and press Enter; a message spanning several lines goes between two lines of
three double quotes. Ctrl+C while a reply streams stops that reply (the partial reply is kept),
Ctrl+C at the prompt clears the line, Ctrl+D or /exit leaves. Input lines are remembered across
runs in a readline history file. A bad /set value, an unwritable /save path, a malformed /load
file or a failed reply prints one line and the chat goes on with its conversation intact.
After each reply a dim line shows tokens, time to first token and tokens/s.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

from planner.errors import ShardwiseError
from planner.files import write_text
from planner.jsonfile import read_json
from planner.units import GIB
from runner.api_args import checked_messages
from runner.engine.sampling import SamplingParams
from runner.openai.protocol import image_params

HELP = """commands:
  /help                 this list
  /clear                forget the conversation (and free cached memory)
  /system [TEXT]        set the system prompt (no TEXT: show it; '-' removes it)
  /set KEY VALUE        sampling: temperature, max_tokens, top_p, seed (none: random), stop,
                        presence_penalty, frequency_penalty
  /save FILE            write the conversation as JSON
  /load FILE            read a conversation written by /save
  /stats                tokens, speed and peak memory so far, next to the plan's budget
  /exit                 leave (Ctrl+D works too)
a message over several lines goes between two lines of \"\"\"; Ctrl+C stops a reply."""

_SETTABLE = {
    "temperature": float,
    "max_tokens": int,
    "top_p": float,
    "seed": int,
    "stop": str,
    "presence_penalty": float,
    "frequency_penalty": float,
}
MULTILINE = '"""'


def stats_line(completion) -> str:
    usage = completion.usage
    parts = [f"{usage.completion_tokens} tokens", f"prompt {usage.prompt_tokens}"]
    if completion.time_to_first_token_s is not None:
        parts.append(f"first token {completion.time_to_first_token_s:.2f}s")
    if completion.tokens_per_s is not None:
        parts.append(f"{completion.tokens_per_s:.1f} tok/s")
    if completion.finish_reason != "stop":
        parts.append(completion.finish_reason)
    return " · ".join(parts)


class Repl:
    def __init__(self, session, *, history_file: str | None = None, console=None, out=None):
        from rich.console import Console

        self.session = session
        self.params: SamplingParams = session.defaults
        self.out = out or sys.stdout
        self.console = console or Console(file=self.out, highlight=False)
        self.history_file = Path(history_file).expanduser() if history_file else None
        self._readline = None

    # -- input -------------------------------------------------------------------------------
    def _setup_readline(self) -> None:
        try:
            import readline
        except ImportError:  # not on every platform; input() still works
            return
        self._readline = readline
        readline.set_history_length(1000)
        if self.history_file is not None and self.history_file.is_file():
            try:
                readline.read_history_file(str(self.history_file))
            except OSError:
                pass

    def _save_readline(self) -> None:
        if self._readline is None or self.history_file is None:
            return
        try:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            self._readline.write_history_file(str(self.history_file))
        except OSError as exc:
            self.console.print(f"[dim]could not save input history to {self.history_file}: {exc}[/dim]")

    def read_message(self) -> str | None:
        """One message (None at end of input); lines between two \"\"\" lines form one message."""
        line = input(">>> ")
        if line.strip() != MULTILINE:
            return line
        lines = []
        while True:
            more = input("... ")
            if more.strip() == MULTILINE:
                return "\n".join(lines)
            lines.append(more)

    # -- commands ----------------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a slash command; False means leave."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("exit", "quit"):
            return False
        if name == "help":
            self.console.print(HELP, markup=False)
        elif name == "clear":
            self.session.clear()
            self.session.clear_memory()
            self.console.print("[dim]conversation cleared[/dim]")
        elif name == "system":
            self._system(arg)
        elif name == "set":
            self._set(arg)
        elif name == "save":
            self._save(arg)
        elif name == "load":
            self._load(arg)
        elif name == "stats":
            self._stats()
        else:
            self.console.print(f"unknown command /{name}: /help lists them", markup=False)
        return True

    def _system(self, arg: str) -> None:
        if not arg:
            self.console.print(f"system prompt: {self.session.system_prompt or '(none)'}", markup=False)
            return
        self.session.system_prompt = None if arg == "-" else arg
        self.console.print("[dim]system prompt set[/dim]" if arg != "-" else "[dim]system prompt removed[/dim]")

    def _set(self, arg: str) -> None:
        arg = arg.strip()
        # `/set KEY=VALUE` as well as `/set KEY VALUE` (a value may hold `=` or spaces: split at the first)
        first = min((i for i in (arg.find("="), arg.find(" ")) if i >= 0), default=len(arg))
        key, value = arg[:first].strip(), arg[first + 1 :].strip()
        if key not in _SETTABLE or not value:
            import difflib

            near = difflib.get_close_matches(key, list(_SETTABLE), n=1) if key not in _SETTABLE else []
            hint = f"unknown key {key!r} (did you mean {near[0]}?); " if near else ""
            self.console.print(
                f"{hint}usage: /set KEY VALUE or /set KEY=VALUE with KEY one of {', '.join(_SETTABLE)}", markup=False
            )
            return
        try:
            if key == "seed" and value.lower() in ("none", "null", "-"):
                params = self.params.with_overrides()
                params.seed = None
            elif key == "stop":
                params = self.params.with_overrides(stop=[] if value == "-" else [*self.params.stop, value])
            else:
                params = self.params.with_overrides(**{key: _SETTABLE[key](value)})
        except ValueError:
            self.console.print(f"/set {key}: {value!r} is not a {_SETTABLE[key].__name__}", markup=False)
            return
        try:
            self.params = params.checked()
        except ShardwiseError as exc:  # out of range: keep the settings as they were
            self.console.print(f"/set {key}: {exc}", markup=False)
            return
        self.console.print(f"[dim]{key} = {getattr(self.params, key)}[/dim]")

    def _save(self, path: str) -> None:
        if not path:
            self.console.print("usage: /save FILE", markup=False)
            return
        data = {
            "system_prompt": self.session.system_prompt,
            "messages": self.session.history,
            "params": asdict(self.params),
            "model": self.session.loaded.name,
        }
        try:
            # the one writer of user-named files: through links, to devices, a FIFO nobody reads is an error
            write_text(Path(path).expanduser(), json.dumps(data, indent=2) + "\n", make_parents=False)
        except OSError as exc:
            self.console.print(
                f"cannot save to {path} ({exc.strerror or exc}): choose a writable /save FILE", markup=False
            )
            return
        self.console.print(f"[dim]saved {len(self.session.history)} messages to {path}[/dim]")

    def _load(self, path: str) -> None:
        if not path:
            self.console.print("usage: /load FILE", markup=False)
            return
        try:
            data = read_json(Path(path).expanduser(), "conversation", dict, "give a file written by /save")
            messages = checked_messages(data["messages"]) if data["messages"] else []
            if image_params(messages):  # history is text (/save writes JSON): images go through the API or serve
                raise ValueError(f"{image_params(messages)[0]} is an image: REPL conversations are text only")
            system_prompt = data.get("system_prompt")
            if system_prompt is not None and not isinstance(system_prompt, str):
                raise ValueError(f"system_prompt is {system_prompt!r}, not a string")
            known = {f.name for f in fields(SamplingParams)}
            saved = data.get("params") or {}
            if not isinstance(saved, dict):
                raise ValueError(f"params is {saved!r}, not an object")
            params = SamplingParams(**{k: v for k, v in saved.items() if k in known}).checked()
        except (OSError, ValueError, KeyError, TypeError, RecursionError, ShardwiseError) as exc:
            self.console.print(f"cannot load {path}: {exc}", markup=False)
            return
        self.session.history = messages
        self.session.system_prompt = system_prompt
        self.params = params
        self.console.print(f"[dim]loaded {len(messages)} messages from {path}[/dim]")

    def _stats(self) -> None:
        turns, totals = self.session.telemetry.turns, self.session.telemetry.totals
        lines = [
            f"model {self.session.loaded.name} ({self.session.plan.strategy}), context "
            f"{self.session.context_tokens} tokens",
            f"{totals['turns']} turns, {totals['prompt_tokens']} prompt + "
            f"{totals['completion_tokens']} completion tokens, "
            f"{len(self.session.history)} messages in the conversation",
        ]
        if totals["timed_turns"]:
            lines.append(f"mean {totals['tokens_per_s_sum'] / totals['timed_turns']:.1f} tok/s")
        if turns:
            planned = turns[-1]["planned_bytes"]
            for device, peak in turns[-1]["peak_bytes"].items():
                budget = f" of {planned[device] / GIB:.2f} GiB planned" if device in planned else ""
                lines.append(f"peak {device}: {peak / GIB:.2f} GiB{budget} (last turn)")
        self.console.print("\n".join(lines), markup=False)

    # -- replies -----------------------------------------------------------------------------
    def reply(self, text: str) -> None:
        stream = None
        try:
            stream = self.session.send(text, self.params, stream=True)
            for delta in stream:
                self.out.write(delta)
                self.out.flush()
        except KeyboardInterrupt:
            if stream is not None:
                stream.close()
            self.out.write("\n")
            self.console.print("[dim]\\[stopped][/dim]")
        except ShardwiseError as exc:
            self.out.write("\n")
            self.console.print(f"error: {exc}", markup=False)
            return
        except Exception as exc:  # an unexpected failure of one turn must not end the chat and lose the conversation
            self.out.write("\n")
            self.console.print(
                f"error: this reply failed ({type(exc).__name__}: {exc}); the conversation is kept, "
                "/save it if in doubt",
                markup=False,
            )
            return
        else:
            self.out.write("\n")
        completion = stream.completion if stream is not None else None
        if completion is not None:
            self.console.print(f"[dim]{stats_line(completion)}[/dim]")

    def run(self) -> None:
        self._setup_readline()
        self.console.print(f"[dim]chatting with {self.session.loaded.name}; /help for commands, Ctrl+D to leave[/dim]")
        try:
            while True:
                try:
                    message = self.read_message()
                except KeyboardInterrupt:
                    self.out.write("\n")
                    continue
                except EOFError:
                    self.out.write("\n")
                    break
                if not message.strip():
                    continue
                if message.startswith("/") and "\n" not in message:
                    if not self.command(message.strip()):
                        break
                    continue
                self.reply(message)
        finally:
            self._save_readline()
