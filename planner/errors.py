"""The one exception type for bad input: the CLI prints its message on one line, exit 2."""


class ShardwiseError(Exception):
    """Something the user gave us is wrong; the message says what, the value, and the fix."""

    exit_code = 2
