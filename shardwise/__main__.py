"""`python -m shardwise <verb> [overrides]` is the same as the `shardwise` console script."""

from shardwise.cli import program

if __name__ == "__main__":
    program()
