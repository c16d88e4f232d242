#!/usr/bin/env bash
# The RWKV-7 kernel table of docs/kernels.md in one call: skein (Triton and CUDA backward), RWKV-LM's
# clampw_v3 and its alt, wind_rwkv's chunked CUDA kernel and fla, at the benchmark shape
# (B8 T4096 H32 K64) and the 0.1B recipe's (B16 T512 H12 K64), bf16, with each kernel's error
# against the float64 token loop beside its time; then DeltaProduct against fla.
#   bash scripts/bench_kernels_side_by_side.sh RWKV_LM_CHECKOUT WIND_RWKV_CHECKOUT
# The CUDA extensions are built first, in parallel (each is cached by torch for later runs).
# Logs go to ${OUT:-gpu-logs}/.
set -uo pipefail
rwkv_lm=${1:?RWKV-LM checkout}/RWKV-v7/train_temp/cuda
wind=${2:?wind_rwkv checkout}
out=${OUT:-gpu-logs}
mkdir -p "$out"
unset TORCH_CUDA_ARCH_LIST
export PYTHONUNBUFFERED=1
t0=$(date +%s)
build() { python -c "$1" > "$out/build-$2.log" 2>&1 || echo "build $2 failed (see $out/build-$2.log)"; }
build "from skein.rwkv.ops.rwkv7.peers import load_rwkv_lm; load_rwkv_lm('$rwkv_lm', 'v3', 64)" rwkv-lm-v3 &
build "from skein.rwkv.ops.rwkv7.peers import load_rwkv_lm; load_rwkv_lm('$rwkv_lm', 'alt', 64)" rwkv-lm-alt &
build "import sys; sys.path.insert(0, '$wind')
from wind_rwkv.rwkv7.chunked_cuda.chunked_cuda import load_chunked_cuda; load_chunked_cuda(64)" wind &
build "from skein.rwkv.ops.rwkv7 import bwd_cuda; bwd_cuda.load()" skein-cuda-bwd &
wait
echo "extensions built in $(($(date +%s) - t0)) s"
peers=(--rwkv_lm_cuda "$rwkv_lm" --wind_rwkv "$wind")
python -m skein.train.cli bench kernels --ops rwkv7 "${peers[@]}" 2>&1 | tee "$out/rwkv7-large.log"
python -m skein.train.cli bench kernels --ops rwkv7 --B 16 --T 512 --H 12 "${peers[@]}" 2>&1 | tee "$out/rwkv7-small.log"
python -m skein.train.cli bench kernels --ops delta_product 2>&1 | tee "$out/delta-product.log"
echo "total $(($(date +%s) - t0)) s"
