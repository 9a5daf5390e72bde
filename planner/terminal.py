"""How wide shardwise writes for people: the terminal's own width, 80 columns in a pipe or a file.

`COLUMNS` overrides both (as it does for rich and the shell). Used by the plan report, the sweep
table and `--help`; machine-readable output (plan.json, JSON Lines, rendered commands) is never wrapped.
"""

from __future__ import annotations

import shutil
import sys
import textwrap

NARROWEST = 40  # below this, wrapped help and tables stop being readable: a tiny terminal scrolls sideways


def columns() -> int:
    return max(NARROWEST, shutil.get_terminal_size((80, 24)).columns)


class NoTrailingSpaces:
    """A text stream that drops the spaces rich leaves at the end of wrapped lines and padded table rows."""

    def __init__(self, out):
        self.out = out
        self.encoding = getattr(out, "encoding", "utf-8")
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.out.write(line.rstrip(" ") + "\n")
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.out.write(self._pending)
            self._pending = ""
        self.out.flush()

    def isatty(self) -> bool:
        return self.out.isatty()

    def fileno(self) -> int:
        return self.out.fileno()


def console():
    """A rich Console on stdout at this width, colour only on a terminal, no trailing spaces."""
    from rich.console import Console

    probe = Console()
    return Console(
        file=NoTrailingSpaces(sys.stdout), width=columns(), force_terminal=probe.is_terminal, highlight=False
    )


def hanging(label: str, text: str, indent: int, width: int) -> list[str]:
    """`label` padded to `indent` columns, then `text` wrapped at word boundaries under itself.

    A label wider than the indent leaves the text to start on the next line."""
    room = max(width - indent, 20)
    parts = textwrap.wrap(text, room, break_long_words=False, break_on_hyphens=False) or [""]
    pad = " " * indent
    if len(label.rstrip()) >= indent:
        return [label.rstrip(), *(pad + part for part in parts)]
    return [label.ljust(indent) + parts[0], *(pad + part for part in parts[1:])]


def command_lines(command: str, indent: int, width: int) -> list[str]:
    """A shell command folded at spaces with ` \\` continuations, so every line still pastes into a shell.

    A trailing `# comment` goes on its own line above the command."""
    command, _, comment = command.partition("  #")
    lines = [" " * indent + "#" + comment.rstrip()] if comment.strip() else []
    if "'" in command or '"' in command:  # a space inside quotes is not a place to fold: left whole
        return [*lines, " " * indent + command.strip()]
    parts = textwrap.wrap(command.strip(), max(width - indent - 2, 20), break_long_words=False, break_on_hyphens=False)
    for i, part in enumerate(parts):
        lead = " " * (indent if i == 0 else indent + 4)
        lines.append(lead + part + (" \\" if i < len(parts) - 1 else ""))
    return lines
