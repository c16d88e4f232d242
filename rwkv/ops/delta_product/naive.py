"""DeltaProduct as a token loop (the ground truth); n_h = 1 is DeltaNet / Gated DeltaNet.

Per head, with the state S kept as [K, V], token t applies the forget gate once and then n_h
generalized Householder steps (DeltaProduct paper, eq. 3):

    S <- exp(g_t) S
    for j in 1..n_h:  S <- (I - beta_{t,j} k_{t,j} k_{t,j}^T) S + beta_{t,j} k_{t,j} v_{t,j}^T
    o_t = S^T (scale * q_t)

beta in (0, 1) keeps the eigenvalues of each step in [0, 1]; beta in (0, 2) allows negative
eigenvalues (needed for state tracking). Keys are expected L2-normalised.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.autocast("cuda", enabled=False)
@torch.autocast("cpu", enabled=False)
def delta_product_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    state: Tensor | None = None,
    scale: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-by-token DeltaProduct recurrence.

    Args:
        q: [B, T, H, K]; k: [B, T, n_h, H, K]; v: [B, T, n_h, H, V]; beta: [B, T, n_h, H].
        g: [B, T, H] log forget gate (<= 0), or None for no gate.
        state: [B, H, K, V] initial state, or None for zeros.
        scale: multiplies q; None means K ** -0.5.
    Returns:
        o: [B, T, H, V] in v's dtype; the final state [B, H, K, V] in float32 (float64 for
        float64 inputs).
    """
    B, T, n_h, H, K = k.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    scale = K**-0.5 if scale is None else scale
    cdt = torch.float64 if v.dtype == torch.float64 else torch.float32
    S = torch.zeros(B, H, K, V, device=v.device, dtype=cdt) if state is None else state.to(cdt)
    q, k, v, beta = (x.to(cdt) for x in (q, k, v, beta))
    os = []
    for t in range(T):
        if g is not None:
            S = torch.exp(g[:, t].to(cdt))[..., None, None] * S
        for j in range(n_h):
            kj, vj, bj = k[:, t, j], v[:, t, j], beta[:, t, j][..., None]
            err = torch.einsum("bhk,bhkv->bhv", kj, S) - vj  # k^T S - v
            S = S - (bj * kj).unsqueeze(-1) * err.unsqueeze(-2)
        os.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S))
    o = torch.stack(os, dim=1) if T else v.new_zeros(B, 0, H, V, dtype=cdt)
    return o.to(out_dtype), S
