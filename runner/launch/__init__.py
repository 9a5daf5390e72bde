"""Multi-GPU and multi-node launches: torchrun / SLURM / vLLM rendering and the rank worker (the launch verb is
shardwise/verbs/launch.py)."""
