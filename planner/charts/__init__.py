"""Pictures of a plan: per-device memory, memory against context, a sweep's matrix, and plan.html.

`shardwise plan charts=true` writes them beside each plan.json it writes (svg.py says why the SVG
is written here rather than by a plotting library). Nothing here is imported by a plan that draws
nothing.
"""
