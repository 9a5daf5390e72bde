"""`python -m runner <verb> [overrides]` is the same as the `shardwise` console script."""

from runner.cli import main

if __name__ == "__main__":
    main()
