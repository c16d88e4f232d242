"""Run one of skein's recurrence kernels, forward and backward, a few times at a benchmark shape, so a
profiler sees exactly those launches (nothing is timed here; `skein bench kernels` times them).

    ncu --clock-control none --kernel-name regex:bwd --launch-skip 1 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \\
        python scripts/profile_kernel.py --op rwkv7
    nsys profile -o rwkv7 python scripts/profile_kernel.py --op rwkv7 --repeats 5

Shapes and inputs are those of `skein bench kernels` (train/bench_kernels.py).
"""

from __future__ import annotations

import argparse

import torch

from skein.train.bench_kernels import (
    BenchShape,
    delta_product_bench_inputs,
    rwkv7_bench_inputs,
    wkv4_bench_inputs,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", choices=["rwkv7", "delta_product", "wkv4"], default="rwkv7")
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--K", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_kernel: needs a CUDA device")
    s = BenchShape(a.B, a.T, a.H, a.K, torch.float32 if a.op == "wkv4" else torch.bfloat16)
    if a.op == "rwkv7":
        from skein.rwkv.ops.rwkv7.chunk import chunk_rwkv7

        x = rwkv7_bench_inputs(s)
        step = lambda: chunk_rwkv7(*x)[0]  # noqa: E731
    elif a.op == "delta_product":
        from skein.rwkv.ops.delta_product.chunk import chunk_delta_product

        x = delta_product_bench_inputs(s)
        step = lambda: chunk_delta_product(*x)[0]  # noqa: E731
    else:
        from skein.rwkv.ops.wkv4.fused import fused_wkv4

        x = list(wkv4_bench_inputs(s))
        step = lambda: fused_wkv4(*x)[0]  # noqa: E731
    for _ in range(a.repeats):
        y = step()
        y.backward(torch.randn_like(y))
    torch.cuda.synchronize()
    print(f"profile_kernel: {a.op} B{a.B} T{a.T} H{a.H} K{a.K}, {a.repeats} forward + backward")


if __name__ == "__main__":
    main()
