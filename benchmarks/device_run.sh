#!/usr/bin/env bash
# The one short script for a lent CUDA machine (torch/transformers there, Hydra carried as wheels
# in .whl/): planned vs measured GPU memory (with MXFP4 and FP8 rows and predicted vs measured
# speed), a real chat turn against its plan, GPU-marked tests. Every step runs; the script exits
# with the number of steps that failed (0: all passed), so a check outside its band fails the run.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD:$PWD/tests PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
failed=0
step() {  # step NAME COMMAND...: run it, its output to $OUT/NAME.log, count a non-zero exit
    local name=$1; shift
    "$@" 2>&1 | tee "$OUT/$name.log"
    local status=$?
    echo "== $name: exit $status" | tee -a "$OUT/steps.txt"
    [ "$status" -eq 0 ] || failed=$((failed + 1))
}
step nvidia_smi nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
step versions python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
step gpu_memory_check python3 benchmarks/gpu_memory_check.py --out "$OUT/gpu_memory_check.json"
step gpu_chat_check python3 benchmarks/gpu_chat_check.py --out "$OUT/gpu_chat_check.json"
step pytest_gpu python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_probe.py
echo "device_run: $failed step(s) failed" | tee -a "$OUT/steps.txt"
exit "$failed"
