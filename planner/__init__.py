"""shardwise planner: resolve model profiles and hardware into an exact, explained Plan.

Nothing here imports torch or transformers at module level: a dry-run plan runs on any
machine. `planner` never imports `runner`.
"""

from planner.errors import ShardwiseError

__all__ = ["ShardwiseError"]
