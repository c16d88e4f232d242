"""RWKV-7 WKV: dispatch between the token loop, the PyTorch chunked form and the GPU kernel."""

from __future__ import annotations

from torch import Tensor

from skein.rwkv.ops.common import resolve_backend
from skein.rwkv.ops.common.chunk_launch import DOTS
from skein.rwkv.ops.rwkv7.naive import rwkv7_naive

GPU_BACKENDS = ("triton",)


def rwkv7(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    scale: float = 1.0,
    backend: str = "auto",
    dots: str = "auto",
) -> tuple[Tensor, Tensor]:
    """RWKV-7 WKV over a sequence. Shapes and math: see naive.rwkv7_naive. `dots` picks the GPU
    kernel's tile-product operands (DOTS); the PyTorch forms compute as they always do."""
    be = resolve_backend("rwkv7", backend, v.device, GPU_BACKENDS)
    if be == "naive":
        return rwkv7_naive(r, w, k, v, a, b, state, scale)
    if be == "parallel":
        from skein.rwkv.ops.rwkv7.parallel import rwkv7_parallel

        return rwkv7_parallel(r, w, k, v, a, b, state, scale)
    from skein.rwkv.ops.rwkv7.chunk import LAUNCH_BY_DOTS, chunk_rwkv7

    return chunk_rwkv7(r, w, k, v, a, b, state, scale, launch=LAUNCH_BY_DOTS[dots])


__all__ = ["DOTS", "GPU_BACKENDS", "rwkv7", "rwkv7_naive"]
