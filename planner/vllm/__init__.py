"""vLLM as the engine of a plan: its memory budget, KV capacity, refusals, speed and `vllm serve` flags.

planner.driver.planning hands a vLLM launch (policy.engine.name == "vllm") to `driver.plan_vllm` once the
formats and the inventory are decided; everything vLLM-specific lives here:

    rules.py   the version-dependent rules and defaults (which release they come from)
    memory.py  vLLM's startup accounting per GPU: weights, non-torch, profile peak, graphs, KV blocks
    speed.py   time per output token and to first token under continuous batching (roofline)
    flags.py   the exact `vllm serve` argv after the model
    driver.py  layout, context and verdict as vLLM would reach them, and the Plan
"""
