"""A plan in words: why this strategy and context, what binds (prose.py), and the report people read (report.py)."""
