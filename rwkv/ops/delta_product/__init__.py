"""DeltaProduct (DeltaNet / Gated DeltaNet for n_h = 1): dispatch between the token loop, the
PyTorch chunked form and the GPU kernel."""

from __future__ import annotations

from torch import Tensor

from skein.rwkv.ops.common import resolve_backend
from skein.rwkv.ops.delta_product.naive import delta_product_naive

GPU_BACKENDS = ("triton",)


def delta_product(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    state: Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """DeltaProduct over a sequence. Shapes and math: see naive.delta_product_naive."""
    be = resolve_backend("delta_product", backend, v.device, GPU_BACKENDS)
    if be == "naive":
        return delta_product_naive(q, k, v, beta, g, state, scale)
    if be == "parallel":
        from skein.rwkv.ops.delta_product.parallel import delta_product_parallel

        return delta_product_parallel(q, k, v, beta, g, state, scale)
    from skein.rwkv.ops.delta_product.chunk import chunk_delta_product

    return chunk_delta_product(q, k, v, beta, g, state, scale)


__all__ = ["GPU_BACKENDS", "delta_product", "delta_product_naive"]
