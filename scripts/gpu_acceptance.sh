#!/usr/bin/env bash
# GPU acceptance in one go: kernel checks against the float64 references, the fla export check,
# the DeepSpeed training tests, then the kernel benchmark at B=8, T=4096, 32 heads of 64.
# Logs go to ${OUT:-gpu-logs}/; the benchmark table is printed last.
#   bash scripts/gpu_acceptance.sh [RWKV_LM_CUDA_DIR]
# RWKV_LM_CUDA_DIR: RWKV-LM's RWKV-v7/train_temp/cuda folder, to time its kernel side by side.
set -uo pipefail
out=${OUT:-gpu-logs}
mkdir -p "$out"
unset TORCH_CUDA_ARCH_LIST  # DeepSpeed's op builder cannot parse "9.0a"
export PYTHONUNBUFFERED=1
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
rc=0
python -m pytest -q -m "gpu or multigpu" tests/gpu 2>&1 | tee "$out/gpu-tests.log" || rc=1
args=()
[ $# -ge 1 ] && args=(--rwkv_lm_cuda "$1")
python -m skein.train.cli bench kernels "${args[@]}" 2>&1 | tee "$out/bench-kernels.log" || rc=1
exit $rc
