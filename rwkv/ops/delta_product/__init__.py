"""DeltaProduct (DeltaNet / Gated DeltaNet for n_h = 1): dispatch between the token loop, the
PyTorch chunked form and the GPU kernel."""

from __future__ import annotations

import torch
from torch import Tensor

from skein.rwkv.ops.common import resolve_backend
from skein.rwkv.ops.common.kernel_checks import head_piece
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

    # Each value column evolves on its own (the transitions act on the key side), so a head_v_dim
    # the kernel does not take (above 128, or not a power of two) runs as pieces it does take.
    V = v.shape[-1]
    piece = head_piece(V)
    if piece == V:
        return chunk_delta_product(q, k, v, beta, g, state, scale)
    parts = [
        chunk_delta_product(
            q, k, v[..., i : i + piece], beta, g, None if state is None else state[..., i : i + piece], scale
        )
        for i in range(0, V, piece)
    ]
    return torch.cat([o for o, _ in parts], -1), torch.cat([s for _, s in parts], -1)


__all__ = ["GPU_BACKENDS", "delta_product", "delta_product_naive"]
