"""Upper bounds on sizes people type or files claim, checked where the values enter.

A plan must take seconds, whatever the input: `hardware.count=100000` or a snapshot claiming a
million nodes would otherwise build huge device lists before any rule could refuse them. Each
bound is far above any real machine or model today, so only hostile or mistyped input hits it.
"""

from __future__ import annotations

MAX_GPUS_PER_NODE = 256  # the largest NVLink domains today (NVL72 racks) hold 72 GPUs
MAX_NODES = 256  # nodes one plan may span (pipeline searches are bounded by the model: place.search.most_stages)
MAX_GPUS = 4096  # GPUs one plan may span (nodes x GPUs per node); keeps every plan within seconds
MAX_SESSIONS = 65536  # concurrent sequences (vLLM's default max-num-seqs is 256 to 1024)
# the deepest public models have a few hundred layers (Llama-3.1-405B: 126); pipeline layouts cost layers x stages,
# so 1024 layers on the largest cluster (4096 GPUs) still plan in seconds, 10,000 took minutes
MAX_LAYERS = 1024
MAX_HOST_RAM_GIB = 1 << 20  # 1 PiB of host RAM per node
