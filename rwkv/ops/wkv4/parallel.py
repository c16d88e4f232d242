"""RWKV-4 WKV in chunked form (pure PyTorch): the same math as naive.wkv4_naive, with one state
update per chunk of L tokens instead of one per token.

For a chunk that starts with the carried state (aa, bb, pp) (the sums before the chunk equal
aa e^pp and bb e^pp), the output at local position t = 0..L-1 is

    wkv_t = (aa e^{pp + t w} + sum_{i <= t} e^{E_ti} v_i) / (bb e^{pp + t w} + sum_{i <= t} e^{E_ti})

    E_ti = k_i + (t - 1 - i) w   (i < t),   E_tt = u + k_t,   E_ti = -inf   (i > t)       (1)

and the state after the chunk's n tokens is the same sum without the bonus term:

    aa' e^{pp'} = aa e^{pp + n w} + sum_{i < n} e^{k_i + (n - 1 - i) w} v_i   (bb': v_i -> 1),
    pp' = max(pp + n w, max_i k_i + (n - 1 - i) w)                                          (2)

which is exactly the running maximum the token loop carries, so pp, aa and bb equal the loop's
up to rounding and final states compare directly.

The [L, L] exponents (1) are reduced for all chunks at once with their own row maximum m_t
subtracted before exp (m_t from the running maximum r_{t+1} = max(r_t + w, k_t), L small steps);
the carried state enters afterwards through e^{pp + t w - M_t} and e^{m_t - M_t} with
M_t = max(m_t, pp + t w), so every exp argument is <= 0 (up to rounding) for any k and w.
Only the chunk-to-chunk state update (2), a few [B, C] operations, runs in a Python loop.
The row maxima m_t and M_t cancel between numerator and denominator, so they are taken out of the
autograd graph; the state's pp' is a real output and keeps its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from skein.rwkv.ops.wkv4.naive import Wkv4State, wkv4_init_state

DEFAULT_CHUNK_SIZE = 8
"""Tokens per chunk: the fastest on CPU at T = 1024 (fewer Python steps vs. B T L C work)."""


def _chunk_exponents(w: Tensor, u: Tensor, L: int) -> Tensor:
    """Exponent offsets of (1) without k: D [L, L, C] with D[t, i] = (t - 1 - i) w for i < t,
    u on the diagonal and -inf above it."""
    pos = torch.arange(L, device=w.device)
    gap = (pos[:, None] - 1 - pos[None, :]).to(w.dtype)  # [L, L]
    D = gap[..., None] * w  # [L, L, C]
    diag = (pos[:, None] == pos[None, :])[..., None]
    D = torch.where(diag, u, D)
    return D.masked_fill((pos[None, :] > pos[:, None])[..., None], float("-inf"))


def _row_max(w: Tensor, u: Tensor, k: Tensor) -> Tensor:
    """m_t = max_i E_ti of (1) for every chunk: the running maximum r_{t+1} = max(r_t + w, k_t)
    of the off-diagonal terms, against the diagonal u + k_t. k: [B, N, L, C] -> [B, N, L, C]."""
    r = torch.full_like(k[:, :, 0], float("-inf"))
    rows = []
    for t in range(k.shape[2]):
        rows.append(torch.maximum(r, u + k[:, :, t]))
        r = torch.maximum(r + w, k[:, :, t])
    return torch.stack(rows, dim=2)


def wkv4_parallel(
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    state: Wkv4State | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Wkv4State]:
    """Chunked WKV; arguments and results as wkv4_naive.

    Args:
        w: [C] log decay per step (-exp(time_decay)), u: [C] bonus of the current token.
        k, v: [B, T, C].
        state: (aa, bb, pp), each [B, C]; None for the empty state.
        chunk_size: tokens per chunk L; work and memory grow as B T L C.
    Returns:
        y: [B, T, C] in k's dtype, and the final state (float32, or float64 for float64 inputs),
        with pp the same running maximum as the token loop's.
    """
    if chunk_size <= 0:
        raise ValueError(f"wkv4_parallel: chunk_size must be positive, got {chunk_size}")
    B, T, C = k.shape
    out_dtype = k.dtype
    cdt = torch.float64 if k.dtype == torch.float64 else torch.float32
    if state is None:
        state = wkv4_init_state(B, C, k.device, cdt)
    if T == 0:
        return k.new_zeros(B, 0, C), tuple(s.to(cdt) for s in state)
    with torch.autocast(device_type=k.device.type, enabled=False):
        y, final = _wkv4_chunks(
            w.to(cdt), u.to(cdt), k.to(cdt), v.to(cdt), tuple(s.to(cdt) for s in state), chunk_size
        )
    return y.to(out_dtype), final


def _wkv4_chunks(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: Wkv4State, chunk_size: int
) -> tuple[Tensor, Wkv4State]:
    B, T, C = k.shape
    L = min(chunk_size, T)
    N = -(-T // L)
    pad = N * L - T
    # Padded tokens get k = -inf: they add e^{-inf} = 0 to every sum they enter.
    k = F.pad(k, (0, 0, 0, pad), value=float("-inf")).view(B, N, L, C)
    v = F.pad(v, (0, 0, 0, pad)).view(B, N, L, C)

    # Chunk-local sums of (1), each row scaled by e^{-m_t}; P is built in one buffer.
    m = _row_max(w.detach(), u.detach(), k.detach())  # [B, N, L, C]
    P = k.unsqueeze(2) - m.unsqueeze(3)  # [B, N, L(t), L(i), C]
    P = P.add_(_chunk_exponents(w, u, L)).exp_()
    num = (P * v.unsqueeze(2)).sum(dim=3)
    den = P.sum(dim=3)

    # Chunk-local state sums of (2), scaled by e^{-ms}; the last chunk has n = L - pad tokens.
    n = torch.full((N,), L, device=k.device, dtype=w.dtype)
    n[-1] = L - pad
    pos = torch.arange(L, device=k.device, dtype=w.dtype)
    Es = k + ((n[:, None] - 1 - pos[None, :])[..., None] * w)  # [B, N, L, C]
    ms = Es.amax(dim=2)  # [B, N, C]
    Ps = torch.exp(Es - ms.unsqueeze(2))
    a_loc = (Ps * v).sum(dim=2)
    b_loc = Ps.sum(dim=2)

    # Carry the state across chunks: the token loop's update (2) with n steps of decay.
    aa, bb, pp = state
    aa_in, bb_in, pp_in = [], [], []
    for j in range(N):
        aa_in.append(aa)
        bb_in.append(bb)
        pp_in.append(pp)
        s = pp + n[j] * w
        p = torch.maximum(s, ms[:, j])
        e1, e2 = torch.exp(s - p), torch.exp(ms[:, j] - p)
        aa, bb, pp = e1 * aa + e2 * a_loc[:, j], e1 * bb + e2 * b_loc[:, j], p
    aa_in, bb_in, pp_in = (torch.stack(x, dim=1).unsqueeze(2) for x in (aa_in, bb_in, pp_in))

    # Combine the carried state with the local sums: exponent pp + t w for the state's part.
    s = pp_in + pos[:, None] * w  # [B, N, L, C]
    M = torch.maximum(s.detach(), m)
    q, r = torch.exp(s - M), torch.exp(m - M)
    y = (q * aa_in + r * num) / (q * bb_in + r * den)
    return y.reshape(B, N * L, C)[:, :T], (aa, bb, pp)
