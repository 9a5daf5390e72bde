"""`shardwise <verb> --help`: what the verb does, examples, and the groups and keys it reads, with their meaning.

The meanings are the one-line comments on each key in `conf/`, so the help never drifts from the
configs. Groups a verb does not compose are left out. Hydra's own help stays at `--hydra-help`.
"""

from __future__ import annotations

import re
import textwrap

from planner import terminal
from planner.config.app import conf_dir, profile_names

# `key: value  # meaning` at the start of a line (indent captured: only top-level keys are listed)
_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?:- )?(?P<key>[A-Za-z_][\w.@/]*)\s*:\s*(?P<value>.*?)\s+#\s*(?P<meaning>.+)$")
# the groups whose keys people set most often, when the verb composes them
_KEYED_GROUPS = ("policy", "generation", "probe")


def _commented_keys(path) -> list[tuple[str, str, str]]:
    """(key, value, meaning) for each `key: value  # meaning` line of a YAML file, nested keys as `parent.key`.

    Hydra's own block and the defaults list are left out.
    """
    rows, parent = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        top = re.match(r"^(?P<key>[A-Za-z_]\w*):\s*(?P<value>[^#]*?)\s*(?:#.*)?$", line)
        if top:
            parent = top["key"] if not top["value"] else None
        if parent in ("hydra", "defaults") or line.lstrip().startswith("-"):
            continue
        match = _KEY_LINE.match(line)
        if not match or not match["value"]:
            continue
        if not match["indent"]:
            rows.append((match["key"], match["value"], match["meaning"]))
        elif parent is not None and len(match["indent"]) == 2:
            rows.append((f"{parent}.{match['key']}", match["value"], match["meaning"]))
    return rows


def _defaults(path) -> list[tuple[str, str, str]]:
    """(group, default option, meaning) from the `defaults:` list of a primary config."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\s+- (?P<group>[\w/]+): (?P<option>[\w.-]+)\s*(?:#\s*(?P<meaning>.*))?$", line)
        if match:
            rows.append((match["group"], match["option"], match["meaning"] or ""))
    return rows


def _block(rows: list[tuple[str, str]], columns: int) -> list[str]:
    """`  name  meaning` rows, the meanings aligned and wrapped under themselves (a long name: on the next line)."""
    indent = min(2 + max(len(name) for name, _ in rows) + 1, columns // 2)
    lines = []
    for name, meaning in rows:
        lines += terminal.hanging(f"  {name} ", meaning, indent, columns)
    return lines


def verb_help(verb: str, summary: str, doc: str | None) -> str:
    """The help text of one verb: summary, examples from the verb's docstring, groups, keys, pointers."""
    columns = terminal.columns()
    primary = conf_dir() / f"{verb}.yaml"
    examples = [line.strip() for line in (doc or "").splitlines() if line.strip().startswith("shardwise ")]
    lines = [f"usage: shardwise {verb} [KEY=VALUE ...] [GROUP=OPTION ...] [-m] [--cfg job]", ""]
    lines += [*textwrap.wrap(f"{summary}.", columns), ""]
    if examples:
        lines.append("examples:")
        for example in examples:
            lines += terminal.command_lines(example, 2, columns)
        lines.append("")
    defaults = _defaults(primary)
    if defaults:
        lines.append("groups (GROUP=OPTION; the default in brackets):")
        for group, option, meaning in defaults:
            lines += terminal.hanging(f"  {group:<12} ", f"[{option}] {meaning}", 15, columns)
            options = profile_names(group)
            if len(options) > 1:
                lines += terminal.hanging(" " * 15, "options: " + ", ".join(options), 17, columns)
        lines.append("")
    own = [(key, f"{meaning} (default: {value})") for key, value, meaning in _commented_keys(primary)]
    if own:
        lines += ["keys:", *_block(own, columns), ""]
    for group, option, _ in defaults:
        if group not in _KEYED_GROUPS:
            continue
        group_file = conf_dir() / group / f"{option}.yaml"
        rows = [(f"{group}.{key}", meaning) for key, _, meaning in _commented_keys(group_file)]
        if rows:
            lines += [f"{group} keys:", *_block(rows, columns), ""]
    lines += textwrap.wrap(
        f"every key and its value: shardwise {verb} --cfg job; Hydra's own flags: shardwise {verb} --hydra-help",
        columns,
    )
    lines += ["tab completion (bash; or install=zsh):", '  eval "$(shardwise --shell-completion install=bash)"']
    return "\n".join(lines)
