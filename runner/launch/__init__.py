"""Multi-GPU and multi-node launches: torchrun / SLURM / vLLM rendering, the launch verb, the rank worker."""
