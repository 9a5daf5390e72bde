"""The one exception type for bad input: the CLI prints its message on one line, exit 2."""


class ShardwiseError(Exception):
    """Something the user gave us is wrong; the message says what, the value, and the fix."""

    exit_code = 2


def did_you_mean(word: str, candidates) -> str:
    """` (did you mean 'x'?)` for the closest candidate to a mistyped name (case-insensitive), else ''."""
    import difflib

    by_lower = {str(c).lower(): str(c) for c in candidates}
    typed = str(word).lower()
    # a name typed short (h100 for h100_80gb) is meant more often than a near spelling of another (h200)
    longer = sorted((c for c in by_lower if c.startswith(typed) and c != typed), key=len) if len(typed) >= 2 else []
    near = longer[:1] or difflib.get_close_matches(typed, list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[near[0]]!r}?)" if near else ""
