"""The planning driver (planning.py) and the searches it runs above the single planning step (place/sizing.py).

sessions.py: the most sessions that fit (policy.sessions=auto); fixes.py: what would make a misfit fit, each re-planned;
fallbacks.py: smaller models to offer. Each calls planner.place.sizing directly; nothing calls back into the driver.
"""
