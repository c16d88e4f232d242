"""RWKV-7 ("Goose") WKV as a token loop: the generalized delta rule (the ground truth).

Per head, with the state S kept as [K, V] (the transpose of RWKV-LM's [V, K] layout):

    S_t = diag(exp(w_t)) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T
    o_t = S_t^T r_t

w_t <= 0 is the log decay (RWKV-7 uses w = -exp(-softplus(-x) - 0.5)), and in the model
a = -kk, b = kk * iclr (RWKV-7 paper, eq. 17-20). In RWKV-LM's [V, K] layout this is
S = S diag(w) + (S a) b^T + v k^T, out = S r.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.autocast("cuda", enabled=False)
@torch.autocast("cpu", enabled=False)
def rwkv7_naive(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Token-by-token RWKV-7 recurrence.

    Args:
        r, w, k, a, b: [B, T, H, K]; v: [B, T, H, V]. w is the log decay (<= 0).
        state: [B, H, K, V] initial state, or None for zeros.
        scale: multiplies r.
    Returns:
        o: [B, T, H, V] in v's dtype; the final state [B, H, K, V] in float32 (float64 for
        float64 inputs).
    """
    B, T, H, K = k.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    cdt = torch.float64 if v.dtype == torch.float64 else torch.float32
    S = torch.zeros(B, H, K, V, device=v.device, dtype=cdt) if state is None else state.to(cdt)
    r, w, k, v, a, b = (x.to(cdt) for x in (r, w, k, v, a, b))
    os = []
    for t in range(T):
        sa = torch.einsum("bhk,bhkv->bhv", a[:, t], S)
        S = (
            torch.exp(w[:, t]).unsqueeze(-1) * S
            + b[:, t].unsqueeze(-1) * sa.unsqueeze(-2)
            + k[:, t].unsqueeze(-1) * v[:, t].unsqueeze(-2)
        )
        os.append(torch.einsum("bhk,bhkv->bhv", r[:, t] * scale, S))
    o = torch.stack(os, dim=1) if T else v.new_zeros(B, 0, H, V, dtype=cdt)
    return o.to(out_dtype), S
