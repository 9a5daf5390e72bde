"""`python -m runner <verb> [overrides]`, kept for existing scripts: the same as `shardwise` (shardwise/cli.py).

A program entry, not a library module: the one place under runner/ that reaches up to the dispatcher.
"""

from shardwise.cli import program

if __name__ == "__main__":
    program()
