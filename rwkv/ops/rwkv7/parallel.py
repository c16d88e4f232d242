"""RWKV-7 WKV in chunked form (pure PyTorch, differentiable by autograd).

Same math and conventions as naive.rwkv7_naive. Per head, with the state S kept as [K, V]:

    S_t = diag(exp w_t) S_{t-1} + b_t u_t^T + k_t v_t^T,   u_t = S_{t-1}^T a_t,   o_t = S_t^T r_t.

The sequence is cut into chunks of L tokens. Inside a chunk with start state S_0, let g_t be the
inclusive cumulative log decay (g_t = w_1 + ... + w_t, per key channel) and g'_t = g_t - w_t the
exclusive one. Unrolling the recurrence gives, with rows indexed by time in the chunk:

    U   = A0 S_0 + A_ab U + A_ak V                 (A0_t = a_t exp(g'_t))
    O   = R0 S_0 + A_rb U + A_rk V                 (R0_t = r_t exp(g_t))
    S_L = diag(exp g_L) S_0 + Be^T U + Ke^T V      (Be_s = b_s exp(g_L - g_s), Ke_s = k_s exp(g_L - g_s))

with A_ab[t, s] = sum_k a_t[k] exp(g'_t[k] - g_s[k]) b_s[k] for s < t (A_ak: k_s in place of b_s)
and A_rb[t, s] = sum_k r_t[k] exp(g_t[k] - g_s[k]) b_s[k] for s <= t (A_rk likewise). The first
line is a unit lower-triangular system, solved once per chunk (the WY / UT-transform step):
U = P S_0 + Q with P = (I - A_ab)^{-1} A0, Q = (I - A_ab)^{-1} A_ak V. Substituting gives the chunk's
affine state map S_L = M S_0 + N, M = diag(exp g_L) + Be^T P, N = Be^T Q + Ke^T V, so the only
sequential work is one [K, K] x [K, V] product per chunk.

Numerical safety: no positive exponent is ever formed. The A matrices are built per sub-chunk of
Ls tokens: between sub-chunks, exp(g_t - g_s) = exp(g_t - g_m) exp(g_m - g_s) with g_m the
cumulative log decay just before t's sub-chunk (s <= m <= t, so both factors are <= 1) and the
product is a matmul; inside a sub-chunk the decays are formed pairwise, with the exponent clamped
at 0 before exp and the entries above the diagonal masked out. Strong decays underflow to 0.
Compute is float32 (float64 for float64 inputs), with autocast switched off inside the op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _chunked(x: Tensor, n_chunks: int, chunk: int) -> Tensor:
    """[B, n_chunks * chunk, H, D] -> [B, H, n_chunks, chunk, D]."""
    B, _, H, D = x.shape
    return x.reshape(B, n_chunks, chunk, H, D).permute(0, 3, 1, 2, 4)


def _intra_chunk_matrices(
    r: Tensor, g: Tensor, g_excl: Tensor, k: Tensor, a: Tensor, b: Tensor, Ls: int
) -> Tensor:
    """The four [L, L] intra-chunk matrices, stacked as [.., 2 (a, r), 2 (b, k), L (t), L (s)].

    r, k, a, b, g (inclusive cumulative log decay), g_excl (exclusive): [.., L, K], L = n_sub * Ls.
    Row "a" holds A_ab / A_ak (strictly lower triangular), row "r" holds A_rb / A_rk (lower).
    """
    *batch, L, K = g.shape
    n_sub = L // Ls
    sub = torch.arange(L, device=g.device) // Ls

    # Between sub-chunks (s in an earlier sub-chunk than t): rank-K products through g_m, the
    # cumulative log decay at the last token before t's sub-chunk (0 for the first one).
    g_m = F.pad(g[..., Ls - 1 : -1 : Ls, :], (0, 0, 1, 0))  # [.., n_sub, K]
    g_m_tok = g_m.repeat_interleave(Ls, dim=-2)  # [.., L, K]: g_m of each token's sub-chunk
    left = torch.stack((a * (g_excl - g_m_tok).exp(), r * (g - g_m_tok).exp()), dim=-3)  # [.., 2, L, K]
    # exp(g_m(i) - g_s) for every target sub-chunk i and source token s; used only where s <= m(i).
    to_m = (g_m.unsqueeze(-2) - g.unsqueeze(-3)).clamp_max(0).exp()  # [.., n_sub, L(s), K]
    right = torch.stack((b, k), dim=-3).unsqueeze(-4) * to_m.unsqueeze(-3)  # [.., n_sub, 2, L, K]
    left = left.unflatten(-2, (n_sub, Ls)).transpose(-4, -3)  # [.., n_sub, 2, Ls, K]
    off = left.flatten(-3, -2) @ right.flatten(-3, -2).transpose(-1, -2)  # [.., n_sub, 2 Ls, 2 L]
    off = off.unflatten(-1, (2, L)).unflatten(-3, (2, Ls))  # [.., n_sub, 2, Ls, 2, L]
    off = off.permute(*range(len(batch)), -4, -2, -5, -3, -1).reshape(*batch, 2, 2, L, L)
    off = off * (sub[None, :] < sub[:, None])

    # Inside a sub-chunk: pairwise decays E[s, t] = exp(g_t - g_s), exponent clamped at 0 (the
    # entries with s > t are masked below). exp(g'_t - g_s) = E[s, t - 1], so the a-rows are built
    # with a shifted one step up inside the sub-chunk and shifted back down afterwards.
    def subs(x: Tensor) -> Tensor:
        return x.unflatten(-2, (n_sub, Ls))  # [.., n_sub, Ls, K]

    gs = subs(g)
    E = (gs.unsqueeze(-3) - gs.unsqueeze(-2)).clamp_max(0).exp()  # [.., n_sub, Ls (s), Ls (t), K]
    q = torch.stack((F.pad(subs(a)[..., 1:, :], (0, 0, 0, 1)), subs(r)), dim=-3)  # [.., n_sub, 2, Ls, K]
    Z = q.unsqueeze(-4) * E.unsqueeze(-3)  # [.., n_sub, Ls (s), 2, Ls (t), K]
    Y = Z.flatten(-3, -2) @ torch.stack((subs(b), subs(k)), dim=-1)  # [.., n_sub, Ls (s), 2 Ls, 2]
    Y = Y.unflatten(-2, (2, Ls)).permute(*range(len(batch)), -5, -3, -1, -2, -4).tril()  # [.., n, 2, 2, t, s]
    diag = torch.stack((F.pad(Y[..., 0, :, :-1, :], (0, 0, 1, 0)), Y[..., 1, :, :, :]), dim=-4)
    blocks = off.unflatten(-1, (n_sub, Ls)).unflatten(-3, (n_sub, Ls))  # [.., 2, 2, n, Ls, n, Ls]
    blocks.diagonal(dim1=-4, dim2=-2).copy_(diag.movedim(-5, -1))
    return off


@torch.autocast("cuda", enabled=False)
@torch.autocast("cpu", enabled=False)
def rwkv7_parallel(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    scale: float = 1.0,
    chunk_size: int = 16,
    sub_chunk_size: int = 4,
) -> tuple[Tensor, Tensor]:
    """Chunked RWKV-7 recurrence.

    Args:
        r, w, k, a, b: [B, T, H, K]; v: [B, T, H, V]. w is the log decay (<= 0).
        state: [B, H, K, V] initial state, or None for zeros.
        scale: multiplies r.
        chunk_size: tokens per chunk (one sequential state update each); any T works, the last
            chunk is padded with identity steps.
        sub_chunk_size: tokens per block of pairwise decays inside a chunk; divides chunk_size.
    Returns:
        o: [B, T, H, V] in v's dtype; the final state [B, H, K, V] in float32 (float64 for
        float64 inputs).
    """
    if sub_chunk_size < 1 or chunk_size < 1 or chunk_size % sub_chunk_size:
        raise ValueError(
            f"rwkv7_parallel: chunk_size ({chunk_size}) must be a positive multiple of "
            f"sub_chunk_size ({sub_chunk_size})"
        )
    B, T, H, K = k.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    cdt = torch.float64 if v.dtype == torch.float64 else torch.float32
    S = torch.zeros(B, H, K, V, device=v.device, dtype=cdt) if state is None else state.to(cdt)
    if T == 0:
        return v.new_zeros(B, 0, H, V), S

    Ls = min(sub_chunk_size, T)
    L = min(chunk_size, -(-T // Ls) * Ls)
    n_chunks = -(-T // L)
    pad = n_chunks * L - T
    # Padded steps have w = 0 and zero r, k, v, a, b: S_t = S_{t-1}, so the final state is exact.
    r, w, k, v, a, b = (
        _chunked(F.pad(x, (0, 0, 0, 0, 0, pad)), n_chunks, L)
        for x in (r.to(cdt) * scale, w.to(cdt), k.to(cdt), v.to(cdt), a.to(cdt), b.to(cdt))
    )

    g = w.cumsum(-2)  # [B, H, N, L, K], inclusive: g_t
    g_excl = g - w  # g'_t
    A_ab, A_ak, A_rb, A_rk = _intra_chunk_matrices(r, g, g_excl, k, a, b, Ls).flatten(-4, -3).unbind(-3)

    eye = torch.eye(L, device=v.device, dtype=cdt)
    rhs = torch.cat((a * g_excl.exp(), A_ak @ v), dim=-1)  # [.., L, K + V]
    PQ = torch.linalg.solve_triangular(eye - A_ab, rhs, upper=False, unitriangular=True)
    P, Q = PQ.split((K, V), dim=-1)

    g_last = g[..., -1:, :]  # [.., 1, K]
    to_end = (g_last - g).exp()  # exp(g_L - g_s) <= 1
    b_end, k_end = (b * to_end).transpose(-1, -2), (k * to_end).transpose(-1, -2)  # [.., K, L]
    M = torch.diag_embed(g_last.squeeze(-2).exp()) + b_end @ P  # [B, H, N, K, K]
    Nc = b_end @ Q + k_end @ v  # [B, H, N, K, V]

    starts = []
    for c in range(n_chunks):
        starts.append(S)
        S = M[:, :, c] @ S + Nc[:, :, c]
    S0 = torch.stack(starts, dim=2)  # [B, H, N, K, V]

    U = P @ S0 + Q
    O = (r * g.exp()) @ S0 + A_rb @ U + A_rk @ v  # [B, H, N, L, V]
    o = O.permute(0, 2, 3, 1, 4).reshape(B, n_chunks * L, H, V)[:, :T]
    return o.to(out_dtype), S
