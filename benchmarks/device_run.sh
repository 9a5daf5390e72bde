#!/usr/bin/env bash
# The one short script for a lent CUDA machine (torch/transformers there, Hydra carried as wheels
# in .whl/): planned vs measured GPU memory, a real chat turn against its plan, GPU-marked tests.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD:$PWD/tests PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv | tee "$OUT/nvidia_smi.csv"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
python3 benchmarks/gpu_memory_check.py --out "$OUT/gpu_memory_check.json" 2>&1 | tee "$OUT/gpu_memory_check.log"
python3 benchmarks/gpu_chat_check.py 2>&1 | tee "$OUT/gpu_chat_check.log"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_probe.py 2>&1 | tee "$OUT/pytest_gpu.log"
