"""What a machine offers: NVML probe, CUDA_VISIBLE_DEVICES, host resources, snapshots and named tiers."""
