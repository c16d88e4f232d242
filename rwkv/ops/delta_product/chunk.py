"""DeltaProduct (Gated DeltaNet for n_h = 1) as chunked Triton kernels behind one autograd Function.

Math and design: README.md beside this file. The n_h Householder steps of each token are laid out
as consecutive steps of one sequence (padded to NHP = next power of two steps per token with
identity steps beta = 0, k = 0); that sequence is cut into chunks of CHUNK steps and each chunk is
solved in the WY/UT form of the gated delta rule, (I + A)^-1, on tensor cores. The [K, V] state
stays in registers across chunks and is written once per chunk (fp32) for the backward pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from skein.rwkv.ops.common.kernel_checks import (
    check_device,
    check_dtypes,
    check_head_size,
    check_length,
    check_shape,
    dot_precision,
)
from skein.rwkv.ops.common.triton_utils import block_v_for, is_interpreted, tri_inverse

CHUNK = 16
"""Steps per chunk (a token takes NHP steps). Gates enter only as pairwise e^{G_i - G_s}, s <= i,
so any log gate <= 0 is safe."""

MAX_HOUSEHOLDER = 16
"""Largest n_h the kernel takes (NHP steps per token must fit in one chunk)."""


@triton.jit
def _load_chunk(q, k, v, beta, g, scale, i_b, i_h, n, T, H, NH,
                K: tl.constexpr, V: tl.constexpr, iv, CS: tl.constexpr, NHP: tl.constexpr,
                HAS_G: tl.constexpr):  # fmt: skip
    """One chunk's step tiles: q [CS, K] (scaled, zero except at each token's last step),
    k [CS, K], v [CS, len(iv)], beta [CS], log gate [CS] (on each token's first step)."""
    s = n * CS + tl.arange(0, CS)
    tok = s // NHP
    j = s % NHP
    live = tok < T
    real = live & (j < NH)
    out = live & (j == NH - 1)
    ik = tl.arange(0, K)
    row_t = (i_b * T + tok).to(tl.int64) * H + i_h
    row_s = ((i_b * T + tok).to(tl.int64) * NH + j) * H + i_h
    q_c = tl.load(q + row_t[:, None] * K + ik[None, :], mask=out[:, None], other=0.0).to(tl.float32)
    k_c = tl.load(k + row_s[:, None] * K + ik[None, :], mask=real[:, None], other=0.0).to(tl.float32)
    v_c = tl.load(v + row_s[:, None] * V + iv[None, :], mask=real[:, None], other=0.0).to(tl.float32)
    b_c = tl.load(beta + row_s, mask=real, other=0.0).to(tl.float32)
    if HAS_G:
        g_c = tl.load(g + row_t, mask=live & (j == 0), other=0.0).to(tl.float32)
    else:
        g_c = tl.zeros([CS], dtype=tl.float32)
    return q_c * scale, k_c, v_c, b_c, g_c, row_t, row_s, real, out, live & (j == 0)


@triton.jit
def _chunk_terms(k_c, b_c, g_c, CS: tl.constexpr, LOG2_CS: tl.constexpr, PREC: tl.constexpr):
    """G = inclusive cumsum of the log gate, D[i, s] = e^{G_i - G_s} (s <= i, else 0),
    KK = k k^T, T_inv = (I + A)^-1 with A[i, s] = beta_i (k_i . k_s) D[i, s] for s < i."""
    ts = tl.arange(0, CS)
    incl = ts[:, None] >= ts[None, :]
    G = tl.cumsum(g_c, axis=0)
    D = tl.where(incl, tl.exp(tl.where(incl, G[:, None] - G[None, :], 0.0)), 0.0)
    KK = tl.dot(k_c, tl.trans(k_c), input_precision=PREC)
    A = tl.where(ts[:, None] > ts[None, :], b_c[:, None] * KK * D, 0.0)
    return G, D, KK, tri_inverse(-A, CS, LOG2_CS)


@triton.jit
def _dp_fwd_kernel(
    q, k, v, beta, g, s0, o, sT, states, scale, T, H, NH,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, CS: tl.constexpr, LOG2_CS: tl.constexpr,
    NHP: tl.constexpr, HAS_G: tl.constexpr, HAS_S0: tl.constexpr, SAVE: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    NT = tl.cdiv(T * NHP, CS)
    ik = tl.arange(0, K)
    iv = i_v * BV + tl.arange(0, BV)
    s_offs = ik[:, None] * V + iv[None, :]
    bh = i_bh.to(tl.int64)
    if HAS_S0:
        S = tl.load(s0 + bh * K * V + s_offs)
    else:
        S = tl.zeros([K, BV], dtype=tl.float32)
    for n in range(NT):
        q_c, k_c, v_c, b_c, g_c, row_t, row_s, real, out, first = _load_chunk(
            q, k, v, beta, g, scale, i_b, i_h, n, T, H, NH, K, V, iv, CS, NHP, HAS_G
        )
        if SAVE:
            tl.store(states + (bh * NT + n) * K * V + s_offs, S)
        G, D, KK, T_inv = _chunk_terms(k_c, b_c, g_c, CS, LOG2_CS, PREC)
        eG = tl.exp(G)
        GC = tl.sum(g_c, axis=0)
        # delta_i = beta_i (v_i - e^{g_i} S_{i-1}^T k_i) for the chunk: T_inv (beta V) - T_inv (beta e^G K) S
        W = tl.dot(T_inv, (b_c * eG)[:, None] * k_c, input_precision=PREC)
        Dl = tl.dot(T_inv, b_c[:, None] * v_c, input_precision=PREC) - tl.dot(W, S, input_precision=PREC)
        M = tl.dot(q_c, tl.trans(k_c), input_precision=PREC) * D
        O = tl.dot(eG[:, None] * q_c, S, input_precision=PREC) + tl.dot(M, Dl, input_precision=PREC)
        tl.store(o + row_t[:, None] * V + iv[None, :], O.to(o.dtype.element_ty), mask=out[:, None])
        Kb = tl.exp(GC - G)[:, None] * k_c
        S = tl.exp(GC) * S + tl.dot(tl.trans(Kb), Dl, input_precision=PREC)
    tl.store(sT + bh * K * V + s_offs, S)


@triton.jit
def _dp_bwd_kernel(
    q, k, v, beta, g, do, dsT, states, dq, dk, dv, dbeta, dg, ds0, scale, T, H, NH,
    K: tl.constexpr, V: tl.constexpr, CS: tl.constexpr, LOG2_CS: tl.constexpr, NHP: tl.constexpr,
    HAS_G: tl.constexpr, HAS_DST: tl.constexpr, WANT_DS0: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    i_bh = tl.program_id(0)
    i_b = i_bh // H
    i_h = i_bh % H
    NT = tl.cdiv(T * NHP, CS)
    ts = tl.arange(0, CS)
    strict = ts[:, None] > ts[None, :]
    incl = ts[:, None] >= ts[None, :]
    ik = tl.arange(0, K)
    iv = tl.arange(0, V)
    s_offs = ik[:, None] * V + iv[None, :]
    bh = i_bh.to(tl.int64)
    if HAS_DST:
        dS = tl.load(dsT + bh * K * V + s_offs)
    else:
        dS = tl.zeros([K, V], dtype=tl.float32)
    for i in range(NT):
        n = NT - 1 - i
        q_c, k_c, v_c, b_c, g_c, row_t, row_s, real, out, first = _load_chunk(
            q, k, v, beta, g, scale, i_b, i_h, n, T, H, NH, K, V, iv, CS, NHP, HAS_G
        )
        p_out = row_t[:, None] * V + iv[None, :]
        do_c = tl.load(do + p_out, mask=out[:, None], other=0.0).to(tl.float32)
        S = tl.load(states + (bh * NT + n) * K * V + s_offs)
        G, D, KK, T_inv = _chunk_terms(k_c, b_c, g_c, CS, LOG2_CS, PREC)
        eG = tl.exp(G)
        GC = tl.sum(g_c, axis=0)
        eGC = tl.exp(GC)
        Bk = (b_c * eG)[:, None] * k_c
        W = tl.dot(T_inv, Bk, input_precision=PREC)
        U = tl.dot(T_inv, b_c[:, None] * v_c, input_precision=PREC)
        Dl = U - tl.dot(W, S, input_precision=PREC)
        QK = tl.dot(q_c, tl.trans(k_c), input_precision=PREC)
        M = QK * D
        Qe = eG[:, None] * q_c
        e_end = tl.exp(GC - G)
        Kb = e_end[:, None] * k_c
        # reverse of O = Qe S + M Delta, S' = e^{GC} S + Kb^T Delta, Delta = T_inv(beta V) - W S (README)
        dDl = tl.dot(tl.trans(M), do_c, input_precision=PREC) + tl.dot(Kb, dS, input_precision=PREC)
        dBv = tl.dot(tl.trans(T_inv), dDl, input_precision=PREC)
        dBk = -tl.dot(dBv, tl.trans(S), input_precision=PREC)
        dA = tl.dot(dBv, tl.trans(U), input_precision=PREC) + tl.dot(dBk, tl.trans(W), input_precision=PREC)
        dA = -tl.where(strict, dA, 0.0)
        dM = tl.where(incl, tl.dot(do_c, tl.trans(Dl), input_precision=PREC), 0.0)
        dQe = tl.dot(do_c, tl.trans(S), input_precision=PREC)
        dKb = tl.dot(Dl, tl.trans(dS), input_precision=PREC)
        d_GC = tl.sum(tl.sum(dKb * Kb, axis=1), axis=0) + tl.sum(tl.sum(S * dS, axis=1), axis=0) * eGC
        dS = eGC * dS + tl.dot(tl.trans(Qe), do_c, input_precision=PREC)
        dS -= tl.dot(tl.trans(W), dDl, input_precision=PREC)
        dMD = dM * D
        dAb = dA * D * b_c[:, None]
        dq_c = dQe * eG[:, None] + tl.dot(dMD, k_c, input_precision=PREC)
        dk_c = tl.dot(tl.trans(dMD), q_c, input_precision=PREC)
        dk_c += tl.dot(dAb, k_c, input_precision=PREC) + tl.dot(tl.trans(dAb), k_c, input_precision=PREC)
        dk_c += (b_c * eG)[:, None] * dBk + e_end[:, None] * dKb
        dv_c = b_c[:, None] * dBv
        db_c = (
            tl.sum(dA * D * KK, axis=1) + tl.sum(dBv * v_c, axis=1) + tl.sum(dBk * eG[:, None] * k_c, axis=1)
        )
        # log-gate gradient: D[i, s] = e^{G_i - G_s}, Qe = e^G q, Bk = e^G beta k, Kb = e^{GC - G} k
        dDD = (dM * QK + dA * b_c[:, None] * KK) * D
        d_G = tl.sum(dQe * Qe, axis=1) + tl.sum(dBk * Bk, axis=1) - tl.sum(dKb * Kb, axis=1)
        d_G += tl.sum(dDD, axis=1) - tl.sum(dDD, axis=0)
        dg_c = tl.sum(d_G, axis=0) - tl.cumsum(d_G, axis=0) + d_G + d_GC
        tl.store(
            dq + row_t[:, None] * K + ik[None, :], (scale * dq_c).to(dq.dtype.element_ty), mask=out[:, None]
        )
        tl.store(dk + row_s[:, None] * K + ik[None, :], dk_c.to(dk.dtype.element_ty), mask=real[:, None])
        tl.store(dv + row_s[:, None] * V + iv[None, :], dv_c.to(dv.dtype.element_ty), mask=real[:, None])
        tl.store(dbeta + row_s, db_c.to(dbeta.dtype.element_ty), mask=real)
        if HAS_G:
            tl.store(dg + row_t, dg_c.to(dg.dtype.element_ty), mask=first)
    if WANT_DS0:
        tl.store(ds0 + bh * K * V + s_offs, dS)


class _ChunkDeltaProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, g, state, scale, block_v, save):
        B, T, NH, H, K = k.shape
        V = v.shape[-1]
        nhp = triton.next_power_of_2(NH)
        NT = triton.cdiv(T * nhp, CHUNK)
        o = torch.empty(B, T, H, V, device=v.device, dtype=v.dtype)
        sT = torch.empty(B, H, K, V, device=v.device, dtype=torch.float32)
        states = torch.empty(B * H, NT, K, V, device=v.device, dtype=torch.float32) if save else None
        bv = block_v or block_v_for(B * H, V, v.device)
        _dp_fwd_kernel[(V // bv, B * H)](
            q, k, v, beta, g, state, o, sT, states, scale, T, H, NH,
            K=K, V=V, BV=bv, CS=CHUNK, LOG2_CS=CHUNK.bit_length() - 1, NHP=nhp,
            HAS_G=g is not None, HAS_S0=state is not None, SAVE=save, PREC=dot_precision(v.dtype), num_warps=4,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, beta, g, states)
        ctx.scale, ctx.has_state = scale, state is not None
        ctx.set_materialize_grads(False)
        return o, sT

    @staticmethod
    def backward(ctx, do, dsT):
        q, k, v, beta, g, states = ctx.saved_tensors
        B, T, NH, H, K = k.shape
        V = v.shape[-1]
        do = torch.zeros(B, T, H, V, device=v.device, dtype=v.dtype) if do is None else do.contiguous()
        want_ds0 = ctx.has_state and ctx.needs_input_grad[5]
        ds0 = torch.empty(B, H, K, V, device=v.device, dtype=torch.float32) if want_ds0 else None
        dq, dk, dv, dbeta = (torch.empty_like(x) for x in (q, k, v, beta))
        dg = torch.empty_like(g) if g is not None else None
        _dp_bwd_kernel[(B * H,)](
            q, k, v, beta, g, do, None if dsT is None else dsT.contiguous(), states,
            dq, dk, dv, dbeta, dg, ds0, ctx.scale, T, H, NH,
            K=K, V=V, CS=CHUNK, LOG2_CS=CHUNK.bit_length() - 1, NHP=triton.next_power_of_2(NH),
            HAS_G=g is not None, HAS_DST=dsT is not None, WANT_DS0=want_ds0, PREC=dot_precision(v.dtype),
            num_warps=4 if K * V <= 32 * 32 else 8,
        )  # fmt: skip
        return dq, dk, dv, dbeta, dg, ds0, None, None, None


def chunk_delta_product(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    g: Tensor | None = None,
    state: Tensor | None = None,
    scale: float | None = None,
    *,
    block_v: int | None = None,
) -> tuple[Tensor, Tensor]:
    """DeltaProduct with the chunked Triton kernels; same math and conventions as delta_product_naive.

    Args:
        q: [B, T, H, K]; k: [B, T, n_h, H, K]; v: [B, T, n_h, H, V]; beta: [B, T, n_h, H]; each
            bf16, fp16 or fp32 (computed in fp32; products on TF32 tensor cores unless v is fp32).
        g: [B, T, H] log forget gate (<= 0), applied once per token before its n_h steps; None
            for no gate.
        state: [B, H, K, V] initial state (cast to fp32), or None for zeros.
        scale: multiplies q; None means K ** -0.5.
        block_v: V columns per forward program (power of two, 16..V); None picks one.
    Returns:
        o: [B, T, H, V] in v's dtype; the final state [B, H, K, V] in fp32. Differentiable in
        every tensor argument, the initial state included.
    Raises:
        ValueError: unsupported device, dtype, shape, head size or n_h.
    """
    op = "chunk_delta_product"
    check_device(op, is_interpreted(_dp_fwd_kernel), q=q, k=k, v=v, beta=beta, g=g, state=state)
    check_dtypes(op, q=q, k=k, v=v, beta=beta, g=g)
    if k.dim() != 5 or v.dim() != 5:
        raise ValueError(f"{op}: k and v must be [B, T, n_h, H, K/V], got {tuple(k.shape)}, {tuple(v.shape)}")
    B, T, NH, H, K = k.shape
    V = v.shape[-1]
    check_shape(op, "q", q, (B, T, H, K))
    check_shape(op, "v", v, (B, T, NH, H, V))
    check_shape(op, "beta", beta, (B, T, NH, H))
    if g is not None:
        check_shape(op, "g", g, (B, T, H))
    check_length(op, T)
    check_head_size(op, "K", K)
    check_head_size(op, "V", V)
    if NH < 1 or NH > MAX_HOUSEHOLDER:
        raise ValueError(f"{op}: n_h = {NH} must be in [1, {MAX_HOUSEHOLDER}]")
    if block_v is not None and (block_v < 16 or block_v > V or block_v & (block_v - 1)):
        raise ValueError(f"{op}: block_v = {block_v} must be a power of two in [16, V = {V}]")
    if state is not None:
        check_shape(op, "state", state, (B, H, K, V))
        if not state.is_floating_point():
            raise ValueError(f"{op}: state must be floating point, got {state.dtype}")
        state = state.float().contiguous()
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    g = g.contiguous() if g is not None else None
    scale = K**-0.5 if scale is None else float(scale)
    save = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (q, k, v, beta, g, state)
    )
    return _ChunkDeltaProduct.apply(q, k, v, beta, g, state, scale, block_v, save)


__all__ = ["CHUNK", "chunk_delta_product"]
