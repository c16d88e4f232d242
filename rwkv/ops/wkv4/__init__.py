"""RWKV-4 WKV: dispatch between the token loop, the PyTorch parallel form and the GPU kernel."""

from __future__ import annotations

from torch import Tensor

from skein.rwkv.ops.common import resolve_backend
from skein.rwkv.ops.wkv4.naive import Wkv4State, wkv4_init_state, wkv4_naive

GPU_BACKENDS = ("triton",)


def wkv4(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: Wkv4State | None = None, backend: str = "auto"
) -> tuple[Tensor, Wkv4State]:
    """RWKV-4 WKV over a sequence. Shapes and math: see naive.wkv4_naive."""
    be = resolve_backend("wkv4", backend, k.device, GPU_BACKENDS)
    if be == "naive":
        return wkv4_naive(w, u, k, v, state)
    if be == "parallel":
        from skein.rwkv.ops.wkv4.parallel import wkv4_parallel

        return wkv4_parallel(w, u, k, v, state)
    from skein.rwkv.ops.wkv4.fused import fused_wkv4

    return fused_wkv4(w, u, k, v, state)


__all__ = ["GPU_BACKENDS", "Wkv4State", "wkv4", "wkv4_init_state", "wkv4_naive"]
