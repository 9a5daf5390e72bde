"""Place one request: which module goes on which device, at what context, in how few GPUs.

sizing.py is the single planning step (size and place one request with a fixed session count); search.py
tries the arrangements and finds the context each reaches; placement.py prices a layout; objective.py picks
among the layouts that fit.
"""
