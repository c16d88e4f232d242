"""DeltaProduct in chunked form (pure PyTorch): the same math as naive.delta_product_naive, with
one state update per chunk instead of one per Householder step.

Interleave the n_h steps of every token into one sequence of length T * n_h (sub-step
s = t * n_h + j). Sub-step s carries key k_s, value v_s, strength b_s and the log gate gamma_s
(g_t on j = 0, zero otherwise); outputs are read after the last sub-step of each token.

Each step is S_s = e^{gamma_s} S_{s-1} + k_s u_s^T with the pseudo-value

    u_s^T = b_s (v_s^T - e^{gamma_s} k_s^T S_{s-1}).                                      (1)

Inside a chunk that starts from state S0, with G_s the gate summed from the chunk start to s,

    S_s = e^{G_s} S0 + sum_{i <= s} e^{G_s - G_i} k_i u_i^T                               (2)

Putting (2) into (1) gives the unit lower-triangular system (the WY/UT transform)

    (I + A) U = diag(b) V - diag(b e^G) K S0,   A_si = b_s e^{G_s - G_i} k_s^T k_i (i < s)  (3)

so U = U_hat - W S0 with W = (I + A)^{-1} diag(b e^G) K and U_hat = (I + A)^{-1} diag(b) V,
both independent of S0. For the query rows t (last sub-step of each token) and the chunk end,

    O = (diag(e^G) Q - P W) S0 + P U_hat,   P_ti = (q_t^T k_i) e^{G_t - G_i} (i <= t)     (4)
    S_end = (e^{G_end} I - Kd^T W) S0 + Kd^T U_hat,   Kd_i = e^{G_end - G_i} k_i          (5)

Everything except the affine map S0 -> S_end of (5) is computed for all chunks at once; only
that map runs in a loop over chunks. Gate differences come from segment sums over the chunk
(never a difference of two long cumulative sums) and are masked to -inf before exp, so every
exponent is <= 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_CHUNK_SIZE = 32


def _segment_sums(g: Tensor) -> Tensor:
    """Gate sums over token ranges of each chunk, -inf where the range runs backwards.

    g: [..., C] log gates of one chunk's tokens. Returns D [..., C + 1, C + 1] with
    D[a, b] = sum_{b <= r < a} g_r for b <= a (index 0 stands for the chunk start), else -inf.
    """
    C = g.shape[-1]
    gp = F.pad(g, (1, 0))  # gp[r + 1] = g_r
    x = gp.unsqueeze(-1).expand(*gp.shape, C + 1)  # x[a, b] = gp[a]
    strict = torch.ones(C + 1, C + 1, dtype=torch.bool, device=g.device).tril(-1)
    D = x.masked_fill(~strict, 0.0).cumsum(dim=-2)  # D[a, b] = sum_{b < a' <= a} gp[a']
    keep = torch.ones(C + 1, C + 1, dtype=torch.bool, device=g.device).tril(0)
    return D.masked_fill(~keep, float("-inf"))


def delta_product_parallel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    state: Tensor | None = None,
    scale: float | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> tuple[Tensor, Tensor]:
    """Chunked DeltaProduct; arguments and results as in naive.delta_product_naive.

    Args:
        q: [B, T, H, K]; k: [B, T, n_h, H, K]; v: [B, T, n_h, H, V]; beta: [B, T, n_h, H].
        g: [B, T, H] log forget gate (<= 0), or None for no gate.
        state: [B, H, K, V] initial state, or None for zeros.
        scale: multiplies q; None means K ** -0.5.
        chunk_size: tokens per chunk (a chunk holds chunk_size * n_h Householder steps).
    Returns:
        o: [B, T, H, V] in v's dtype; the final state [B, H, K, V] in float32 (float64 for
        float64 inputs).
    """
    if chunk_size <= 0:
        raise ValueError(f"delta_product_parallel: chunk_size must be positive, got {chunk_size}")
    B, T, n_h, H, K = k.shape
    V = v.shape[-1]
    out_dtype = v.dtype
    scale = K**-0.5 if scale is None else scale
    cdt = torch.float64 if v.dtype == torch.float64 else torch.float32
    dev = v.device
    with torch.autocast(device_type=dev.type, enabled=False):
        S = torch.zeros(B, H, K, V, device=dev, dtype=cdt) if state is None else state.to(cdt)
        if T == 0:
            return v.new_zeros(B, 0, H, V), S
        Ct = min(chunk_size, T)
        N = -(-T // Ct)
        pad = N * Ct - T
        C = Ct * n_h

        # [B, T, ...] -> [B, N, Ct, ...]; padded tokens have k = v = beta = g = 0 (identity steps).
        def chunks(x: Tensor) -> Tensor:
            x = F.pad(x.to(cdt), (0, 0) * (x.dim() - 2) + (0, pad))
            return x.reshape(B, N, Ct, *x.shape[2:])

        qc = chunks(q).permute(0, 3, 1, 2, 4) * scale  # [B, H, N, Ct, K]
        # sub-step order s = t * n_h + j: [B, N, Ct, n_h, H, .] -> [B, H, N, Ct * n_h, .]
        kc = chunks(k).permute(0, 4, 1, 2, 3, 5).reshape(B, H, N, C, K)
        vc = chunks(v).permute(0, 4, 1, 2, 3, 5).reshape(B, H, N, C, V)
        bc = chunks(beta).permute(0, 4, 1, 2, 3).reshape(B, H, N, C)

        if g is None:
            D = torch.zeros(Ct + 1, Ct + 1, device=dev, dtype=cdt)
            D = D.masked_fill(~torch.ones_like(D, dtype=torch.bool).tril(0), float("-inf"))
            D = D.expand(B, H, N, Ct + 1, Ct + 1)
        else:
            D = _segment_sums(chunks(g).permute(0, 3, 1, 2))  # [B, H, N, Ct + 1, Ct + 1]
        decay_tok = D[..., 1:, 1:].exp()  # e^{G_t - G_u}, u <= t, else 0
        decay_in = D[..., 1:, 0].exp()  # e^{G_t}, from the chunk start
        decay_out = D[..., -1, 1:].exp()  # e^{G_end - G_u}, to the chunk end
        decay_all = D[..., -1, 0].exp()  # e^{G_end}
        sub = lambda x: x.repeat_interleave(n_h, dim=-1)  # token index -> sub-step index

        # (3): strictly lower A over sub-steps, solved for [W | U_hat] in one triangular solve.
        decay_ss = sub(sub(decay_tok).transpose(-1, -2)).transpose(-1, -2)  # [.., C, C]
        strict = torch.ones(C, C, dtype=torch.bool, device=dev).tril(-1)
        A = (kc @ kc.transpose(-1, -2) * decay_ss * bc.unsqueeze(-1)).masked_fill(~strict, 0.0)
        eye = torch.eye(C, device=dev, dtype=cdt)
        rhs = torch.cat([kc * (bc * sub(decay_in)).unsqueeze(-1), vc * bc.unsqueeze(-1)], dim=-1)
        sol = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
        W, U_hat = sol[..., :K], sol[..., K:]

        # (4): P over (query token, sub-step), with u <= t inclusive.
        P = (qc @ kc.transpose(-1, -2)) * sub(decay_tok)  # [B, H, N, Ct, C]
        q_eff = qc * decay_in.unsqueeze(-1) - P @ W  # [B, H, N, Ct, K]
        o_intra = P @ U_hat  # [B, H, N, Ct, V]

        # (5): the chunk's affine state map S -> A_n S + B_n.
        kd = kc * sub(decay_out).unsqueeze(-1)
        A_n = torch.diag_embed(decay_all.unsqueeze(-1).expand(B, H, N, K)) - kd.transpose(-1, -2) @ W
        B_n = kd.transpose(-1, -2) @ U_hat

        starts = []
        for n in range(N):
            starts.append(S)
            S = torch.baddbmm(
                B_n[:, :, n].reshape(B * H, K, V), A_n[:, :, n].reshape(B * H, K, K), S.reshape(B * H, K, V)
            ).view(B, H, K, V)
        o = o_intra + q_eff @ torch.stack(starts, dim=2)  # [B, H, N, Ct, V]
        o = o.reshape(B, H, N * Ct, V)[:, :, :T].transpose(1, 2)
    return o.to(out_dtype), S
