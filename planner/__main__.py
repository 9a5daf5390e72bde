"""`python -m planner <verb> [overrides]` is the same as the `shardwise` console script."""

from planner.cli import main

if __name__ == "__main__":
    main()
