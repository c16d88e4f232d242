"""Run one kernel of `skein bench kernels` (skein's or a peer's), forward and backward, a few times at a
benchmark shape, so a profiler sees exactly those launches (nothing is timed here).

    ncu --clock-control none --kernel-name regex:_rwkv7_bwd --launch-skip 1 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \\
        python scripts/profile_kernel.py --case "skein chunk_rwkv7"
    nsys profile -o rwkv7 python scripts/profile_kernel.py --case "skein chunk_rwkv7" --repeats 5

Cases, shapes and inputs are those of `skein bench kernels` (rwkv/ops/bench.py).
"""

from __future__ import annotations

import argparse

import torch

from skein.rwkv.ops.bench import REGISTRY, BenchShape


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=sorted(REGISTRY), default="skein chunk_rwkv7")
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--T", type=int, default=4096)
    p.add_argument("--H", type=int, default=32)
    p.add_argument("--K", type=int, default=64)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_kernel: needs a CUDA device")
    runner = REGISTRY[a.case].build(BenchShape(a.B, a.T, a.H, a.K, torch.bfloat16))
    for _ in range(a.repeats):
        runner.fwd_bwd()
    torch.cuda.synchronize()
    print(f"profile_kernel: {a.case} B{a.B} T{a.T} H{a.H} K{a.K}, {a.repeats} forward + backward")


if __name__ == "__main__":
    main()
