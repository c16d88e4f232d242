"""Benchmark cases of the RWKV-7 op: skein's chunked kernel (Triton and CUDA backward), fla's
chunk_rwkv7, and RWKV-LM's rwkv7_clampw_v3 CUDA kernel compiled from a directory the user gives
(its sources are not part of skein)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from skein.rwkv.ops.common.bench import BenchCase, BenchShape, Runner, autograd_runner, leaf


def rwkv7_bench_inputs(s: BenchShape) -> list[Tensor]:
    """r, w, k, v, a, b like an RWKV-7 layer's: w = -exp(-softplus(-x) - 0.5), a = -kk, b = kk * iclr."""
    shape, dev = (s.B, s.T, s.H, s.K), s.device
    kk = F.normalize(torch.randn(shape, device=dev), dim=-1)
    w = -torch.exp(-F.softplus(-torch.randn(shape, device=dev)) - 0.5)
    r, k, v = (torch.randn(shape, device=dev) for _ in range(3))
    a, b = -kk, kk * torch.sigmoid(torch.randn(shape, device=dev))
    return [leaf(x, s.dtype) for x in (r, w, k * s.K**-0.5, v, a, b)]


def _skein_rwkv7(s: BenchShape, bwd_kernel: str = "triton") -> Runner:
    from skein.rwkv.ops.rwkv7.chunk import Rwkv7Launch, chunk_rwkv7

    launch = Rwkv7Launch(bwd_kernel=bwd_kernel)
    x = rwkv7_bench_inputs(s)
    return autograd_runner(lambda: chunk_rwkv7(*x, launch=launch)[:1], x)


def _skein_rwkv7_cuda_bwd(s: BenchShape) -> Runner:
    return _skein_rwkv7(s, "cuda")


def _fla_rwkv7(s: BenchShape) -> Runner:
    from fla.ops.rwkv7 import chunk_rwkv7

    x = rwkv7_bench_inputs(s)
    return autograd_runner(lambda: chunk_rwkv7(*x, scale=1.0)[:1], x)


RWKV_LM_SOURCES = ("rwkv7_clampw_v3.cpp", "rwkv7_clampw_v3_for_h100.cu")
"""Files of RWKV-LM's RWKV-v7/train_temp/cuda needed for its H100 rwkv7 kernel."""


def rwkv_lm_cuda_case(directory: str) -> Callable[[BenchShape], Runner]:
    """RWKV-LM's rwkv7_clampw_v3 (bf16, chunk 16, no state in/out; it takes the raw w and
    clamps the decay inside), compiled with torch.utils.cpp_extension.load from `directory`."""

    def build(s: BenchShape) -> Runner:
        from torch.utils.cpp_extension import load

        if s.dtype != torch.bfloat16 or s.T % 16:
            raise ValueError("rwkv7_clampw_v3 takes bf16 and T % 16 == 0")
        sources = [Path(directory) / f for f in RWKV_LM_SOURCES]
        missing = [str(p) for p in sources if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"missing {missing}")
        load(
            name=f"rwkv7_clampw_v3_n{s.K}",
            sources=[str(p) for p in sources],
            is_python_module=False,
            extra_cuda_cflags=[
                "-res-usage", "--use_fast_math", "-O3", "-Xptxas -O3", "--extra-device-vectorization",
                f"-D_N_={s.K}", "-D_CHUNK_LEN_=16",
            ],
        )  # fmt: skip
        ops = torch.ops.rwkv7_clampw_v3
        r, w, k, v, a, b = (x.detach() for x in rwkv7_bench_inputs(s))
        y = torch.empty_like(v)
        st = torch.empty(s.B, s.H, s.T // 16, s.K, s.K, device=s.device, dtype=torch.float32)
        sa = torch.empty(s.B, s.T, s.H, s.K, device=s.device, dtype=torch.float32)
        dy = torch.randn_like(v)
        grads = [torch.empty_like(x) for x in (r, w, k, v, a, b)]

        def fwd() -> object:
            ops.forward(r, w, k, v, a, b, y, st, sa)
            return y

        def fwd_bwd() -> object:
            fwd()
            ops.backward(r, w, k, v, a, b, dy, st, sa, *grads)
            return grads

        io = 7 * r.numel() * r.element_size()
        return Runner(fwd, fwd_bwd, io, 2 * io)

    return build


CASES = (
    BenchCase("skein chunk_rwkv7", "rwkv7", _skein_rwkv7),
    BenchCase("skein chunk_rwkv7, CUDA backward", "rwkv7", _skein_rwkv7_cuda_bwd),
    BenchCase("fla chunk_rwkv7", "rwkv7", _fla_rwkv7, peer=True),
)
