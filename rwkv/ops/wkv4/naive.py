"""RWKV-4 WKV as a token loop in the overflow-safe running-max form (the ground truth).

For channel c, with w = -exp(time_decay) < 0 and u = time_first:

    wkv_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
          / (sum_{i<t} e^{(t-1-i) w + k_i}     + e^{u + k_t})

The sums are carried as (aa, bb, pp): aa = sum e^{...-pp} v_i, bb = sum e^{...-pp}, with pp the
running maximum exponent, so no exp ever overflows (RWKV-4 paper, appendix on numerical stability).
"""

from __future__ import annotations

import torch
from torch import Tensor

Wkv4State = tuple[Tensor, Tensor, Tensor]


def wkv4_init_state(batch: int, channels: int, device=None, dtype=torch.float32) -> Wkv4State:
    """The empty state: aa = bb = 0, pp = -1e38 (so the first token's weight is exactly 1)."""
    aa = torch.zeros(batch, channels, device=device, dtype=dtype)
    return aa, aa.clone(), torch.full_like(aa, -1e38)


@torch.autocast("cuda", enabled=False)
@torch.autocast("cpu", enabled=False)
def wkv4_naive(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: Wkv4State | None = None
) -> tuple[Tensor, Wkv4State]:
    """Token-by-token WKV.

    Args:
        w: [C] log decay per step (-exp(time_decay)), u: [C] bonus of the current token.
        k, v: [B, T, C].
        state: (aa, bb, pp), each [B, C]; None for the empty state.
    Returns:
        y: [B, T, C] in k's dtype, and the final state (float32, or float64 for float64 inputs).
    """
    B, T, C = k.shape
    out_dtype = k.dtype
    cdt = torch.float64 if k.dtype == torch.float64 else torch.float32
    if state is None:
        state = wkv4_init_state(B, C, k.device, cdt)
    aa, bb, pp = (s.to(cdt) for s in state)
    w, u, k, v = w.to(cdt), u.to(cdt), k.to(cdt), v.to(cdt)
    ys = []
    for t in range(T):
        kt, vt = k[:, t], v[:, t]
        ww = u + kt
        p = torch.maximum(pp, ww)
        e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
        ys.append((e1 * aa + e2 * vt) / (e1 * bb + e2))
        ww = w + pp
        p = torch.maximum(ww, kt)
        e1, e2 = torch.exp(ww - p), torch.exp(kt - p)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, p
    y = torch.stack(ys, dim=1) if T else k.new_zeros(B, 0, C)
    return y.to(out_dtype), (aa, bb, pp)
