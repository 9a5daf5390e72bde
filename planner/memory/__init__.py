"""Memory per device, in bytes: weights, KV cache, activations, overhead; and the serving KV pool.

terms.py is the cost model (planned = weights + kv + activations + overhead <= usable); kv.py sizes the KV cache per
layer and token as transformers holds it; serving.py sizes continuous batching's paged cache from the KV budget.
"""
