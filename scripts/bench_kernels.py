"""Time skein's Triton kernels next to peer kernels on one CUDA GPU and print the table.

    python scripts/bench_kernels.py --B 8 --T 4096 --H 32 --K 64 --dtype bfloat16 \
        [--rwkv_lm_cuda /path/to/RWKV-LM/RWKV-v7/train_temp/cuda]

Flags mirror skein.train.bench_kernels.bench_kernels (see --help).
"""

from __future__ import annotations

from jsonargparse import CLI

from skein.train.bench_kernels import bench_kernels

if __name__ == "__main__":
    CLI(bench_kernels, as_positional=False)
