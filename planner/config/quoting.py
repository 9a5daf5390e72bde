"""Writing values back as Hydra overrides and shell words, so they parse back exactly as they were.

Every command shardwise prints or starts (`launch`'s children, a dry run, the plan report's "Run it:" line,
`make_plan(model_path=...)`) carries values that came from a user: paths with `,` `=` `'` `[` or spaces, prompts
holding `${...}`. Hydra's override grammar gives those characters meaning, and OmegaConf resolves `${...}` in any
string value, so each value is quoted for Hydra (and escaped for OmegaConf), then the whole word for the shell.
"""

from __future__ import annotations

import re
import shlex

# characters with a meaning in Hydra's override grammar (hydra/_internal/grammar/utils.py _ESC, quotes, `$`)
_HYDRA_SPECIAL = re.compile(r"[\\()\[\]{}:=,\s'\"$]")


def hydra_literal(value) -> str:
    """`value` written as a Hydra override value that parses back to exactly `value` (strings quoted and escaped)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_literal(item) for item in value) + "]"
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", str(value))  # no interpolation of user text
    quote = "'" if '"' in text and "'" not in text else '"'  # double quotes read better inside shell quotes
    text = re.sub(rf"(\\*){quote}", lambda m: m.group(1) * 2 + "\\" + quote, text)  # backslashes before a quote
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)  # ... and before the closing quote are escapes
    return f"{quote}{text}{quote}"


def override(key: str, value) -> str:
    """`key=value` for Hydra, the value quoted when it holds a character Hydra would read or cannot lex (non-ASCII);
    plain paths stay readable: `plan_file=plan.json`."""
    text = str(value)
    plain = isinstance(value, str) and text.isascii() and text.isprintable() and not _HYDRA_SPECIAL.search(text)
    plain = plain and text.lower() not in ("null", "true", "false", "none") and not _looks_numeric(text)
    return f"{key}={text if plain else hydra_literal(value)}"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def shell_override(key: str, value) -> str:
    """An override as one shell word."""
    return shlex.quote(override(key, value))
