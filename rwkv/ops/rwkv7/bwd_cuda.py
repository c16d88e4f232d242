"""The RWKV-7 backward as a CUDA kernel (bwd_cuda.cu with bwd_cuda_kernel.cuh): which calls it
takes, and its build, done with torch.utils.cpp_extension on first use and cached on disk.

The Triton forward (chunk.py) saves what it needs: the state at every chunk start (chunk 16) and
u_t = S_{t-1}^T a_t for every token (fp32). The kernel runs the token recurrence in reverse, one
thread block per (batch, head); README.md beside this file, "CUDA backward", has the math.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import Tensor

CONFIGS: dict[int, tuple[int, ...]] = {64: (0, 1, 2, 3), 32: (0,)}
"""Launch configurations compiled per head size, as `config` numbers of bwd_cuda.cu. Each is
(threads per state row, rows per row thread, threads per column, columns per column thread):
0 = (4, 2, 2, 2), 192 threads a head; 1 = (4, 2, 4, 2), 256; 2 = (8, 2, 4, 2), 384;
3 = (4, 1, 2, 1), 384."""
DEFAULT_CONFIG = 0
DTYPES = (torch.bfloat16, torch.float32)
CHUNK = 16
"""The forward's chunk: the kernel starts from a saved state every CHUNK tokens."""
KERNELS = ("triton", "cuda")
"""Values of Rwkv7Launch.bwd_kernel."""


def unsupported(
    inputs: tuple[Tensor, ...], v: Tensor, chunk: int, block_v: int, two_pass: bool
) -> str | None:
    """Why the CUDA backward cannot take these forward inputs and launch, or None if it can.

    Args:
        inputs: r, w, k, a, b as passed to chunk_rwkv7; v: the values.
        chunk, block_v, two_pass: the launch's chunk size, backward V block and two-pass flag.
    """
    r = inputs[0]
    K, V = r.shape[-1], v.shape[-1]
    if K != V or K not in CONFIGS:
        return f"head sizes K = {K}, V = {V} (it has K = V in {sorted(CONFIGS)})"
    if chunk != CHUNK:
        return f"chunk = {chunk} (it needs the forward's states every {CHUNK} tokens)"
    if block_v not in (0, V) or two_pass:
        return "a V-split or two-pass backward"
    dtypes = {x.dtype for x in (*inputs, v)}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPES:
        names = " or ".join(str(d).removeprefix("torch.") for d in DTYPES)
        found = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        return f"inputs in {found} (it needs r, w, k, v, a, b all {names}, one dtype)"
    if not r.is_cuda:
        return "inputs that are not on a CUDA device"
    return None


@functools.cache
def _build() -> object:
    """The compiled extension, or the exception its build raised."""
    from torch.utils.cpp_extension import load

    here = Path(__file__).parent
    try:
        return load(
            name="skein_rwkv7_bwd",
            sources=[str(here / "bwd_cuda.cu")],
            extra_include_paths=[str(here)],
            extra_cuda_cflags=["-O3", "-std=c++17"],
            verbose=False,
        )
    except Exception as e:  # no nvcc, no compiler, or an unsupported toolkit
        return e


def load():
    """The CUDA extension (built on the first call, then loaded from torch's extension cache);
    a RuntimeError naming the build's error if it cannot be built."""
    mod = _build()
    if isinstance(mod, Exception):
        lines = str(mod).strip().splitlines()
        raise RuntimeError(
            f"chunk_rwkv7: the CUDA backward could not be built ({type(mod).__name__}: "
            f"{lines[-1] if lines else ''}); install the CUDA toolkit (nvcc) that matches torch, "
            "or use Rwkv7Launch(bwd_kernel='triton')"
        ) from mod
    return mod


def rwkv7_bwd_cuda(
    xs: tuple[Tensor, ...],
    do: Tensor,
    u: Tensor,
    states: Tensor,
    sT: Tensor,
    dsT: Tensor | None,
    scale: float,
    want_ds0: bool,
    config: int,
) -> list[Tensor]:
    """dr, dw, dk, dv, da, db and the initial state's gradient (empty unless `want_ds0`).

    Args:
        xs: r, w, k, v, a, b, contiguous, one dtype; do: the output's gradient (cast to it).
        u, states, sT: what the forward saved (fp32); dsT: the final state's gradient or None.
    """
    return load().rwkv7_bwd(
        [*xs, do.to(xs[0].dtype).contiguous()], u, states, sT, dsT, scale, want_ds0, config
    )


__all__ = ["CHUNK", "CONFIGS", "DEFAULT_CONFIG", "DTYPES", "KERNELS", "load", "rwkv7_bwd_cuda", "unsupported"]
