"""`python -m shardwise <verb> [overrides]` is the same as the `shardwise` console script."""

from shardwise.cli import main

if __name__ == "__main__":
    main()
