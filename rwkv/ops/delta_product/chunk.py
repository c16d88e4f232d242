"""DeltaProduct (Gated DeltaNet for n_h = 1) as chunked Triton kernels, registered as the custom
ops skein::delta_product_fwd and skein::delta_product_bwd (fake and autograd implementations
included, so torch.compile traces through them).

Math and design: README.md beside this file. The n_h Householder steps of each token are laid out
as consecutive steps of one sequence (padded to NHP = next power of two steps per token with
identity steps beta = 0, k = 0); that sequence is cut into chunks of CHUNK steps and each chunk is
solved in the WY/UT form of the gated delta rule, (I + A)^-1, on tensor cores. The [K, V] state
stays in registers across chunks and is written once per chunk (fp32) for the backward pass.
Both passes may split V across programs; the backward's reductions over V are summed after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from skein.rwkv.ops.common.chunk_launch import (
    CHUNKS,
    ChunkLaunch,
    backward_can_follow,
    prepare_state,
    resolve_launch,
)
from skein.rwkv.ops.common.kernel_checks import (
    check_device,
    check_dtypes,
    check_head_size,
    check_length,
    check_shape,
    dot_precision,
)
from skein.rwkv.ops.common.triton_utils import (
    block_v_for,
    grad_parts,
    is_interpreted,
    reduce_mode,
    store_part,
    sum_parts,
    tri_inverse,
)

CHUNK = 16
"""Steps per chunk (a token takes NHP steps). Gates enter only as pairwise e^{G_i - G_s}, s <= i,
so any log gate <= 0 is safe."""

MAX_HOUSEHOLDER = 16
"""Largest n_h the kernel takes (NHP steps per token must fit in one chunk)."""


@dataclass(frozen=True)
class DeltaProductLaunch(ChunkLaunch):
    """Launch parameters of the DeltaProduct kernels (ChunkLaunch's: chunk in steps, n_h per token
    padded to a power of two; the V-summed gradients are those of q, k, beta, g); every choice
    computes the same function.

    scripts/gpu_kernel_sweep.py times the variants; DEFAULT_LAUNCH holds the chosen one.
    """

    chunk: int = CHUNK

    def check(self, V: int, op: str = "chunk_delta_product") -> None:
        super().check(V, op)


DEFAULT_LAUNCH = DeltaProductLaunch()


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
    q, k, v, beta, g, do, dsT, states, dstates, dq, dk, dv, dbeta, dg, ds0, scale, T, H, NH, PART_Q,
    PART_K, PART_B, PART_G, K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, CS: tl.constexpr,
    LOG2_CS: tl.constexpr, NHP: tl.constexpr, HAS_G: tl.constexpr, HAS_DST: tl.constexpr,
    WANT_DS0: tl.constexpr, PREC: tl.constexpr, MODE: tl.constexpr, CHUNK_PARALLEL: tl.constexpr,
):  # fmt: skip
    """All gradients, walking the chunks in reverse with dS in registers; or, with
    CHUNK_PARALLEL, one chunk per program (axis 2) with its dS' read from `dstates`, which
    _dp_bwd_state_kernel wrote."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    NT = tl.cdiv(T * NHP, CS)
    ts = tl.arange(0, CS)
    strict = ts[:, None] > ts[None, :]
    incl = ts[:, None] >= ts[None, :]
    ik = tl.arange(0, K)
    iv = i_v * BV + tl.arange(0, BV)
    blk = i_v.to(tl.int64)
    s_offs = ik[:, None] * V + iv[None, :]
    bh = i_bh.to(tl.int64)
    if HAS_DST and not CHUNK_PARALLEL:
        dS = tl.load(dsT + bh * K * V + s_offs)
    else:
        dS = tl.zeros([K, BV], dtype=tl.float32)
    if CHUNK_PARALLEL:
        i_lo = NT - 1 - tl.program_id(2)
        i_hi = i_lo + 1
    else:
        i_lo = 0
        i_hi = NT
    for i in range(i_lo, i_hi):
        n = NT - 1 - i
        q_c, k_c, v_c, b_c, g_c, row_t, row_s, real, out, first = _load_chunk(
            q, k, v, beta, g, scale, i_b, i_h, n, T, H, NH, K, V, iv, CS, NHP, HAS_G
        )
        p_out = row_t[:, None] * V + iv[None, :]
        do_c = tl.load(do + p_out, mask=out[:, None], other=0.0).to(tl.float32)
        S = tl.load(states + (bh * NT + n) * K * V + s_offs)
        if CHUNK_PARALLEL:
            dS = tl.load(dstates + (bh * NT + n) * K * V + s_offs)
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
        # reverse of O = Qe S + M Delta, S' = e^{GC} S + Kb^T Delta, Delta = T_inv(beta V) - W S (README).
        # Delta, dDelta, dV and dS are column-wise in V; with V split, the q, k, beta, g gradients
        # below are this block's parts of sums over V.
        dDl = tl.dot(tl.trans(M), do_c, input_precision=PREC) + tl.dot(Kb, dS, input_precision=PREC)
        dBv = tl.dot(tl.trans(T_inv), dDl, input_precision=PREC)
        dBk = -tl.dot(dBv, tl.trans(S), input_precision=PREC)
        dA = tl.dot(dBv, tl.trans(U), input_precision=PREC) + tl.dot(dBk, tl.trans(W), input_precision=PREC)
        dA = -tl.where(strict, dA, 0.0)
        dM = tl.where(incl, tl.dot(do_c, tl.trans(Dl), input_precision=PREC), 0.0)
        dQe = tl.dot(do_c, tl.trans(S), input_precision=PREC)
        dKb = tl.dot(Dl, tl.trans(dS), input_precision=PREC)
        d_GC = tl.sum(tl.sum(dKb * Kb, axis=1), axis=0) + tl.sum(tl.sum(S * dS, axis=1), axis=0) * eGC
        if not CHUNK_PARALLEL:
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
        m_q = out[:, None] & (ik < K)[None, :]
        m_k = real[:, None] & (ik < K)[None, :]
        store_part(dq, row_t[:, None] * K + ik[None, :], scale * dq_c, m_q, blk * PART_Q, MODE)
        store_part(dk, row_s[:, None] * K + ik[None, :], dk_c, m_k, blk * PART_K, MODE)
        tl.store(dv + row_s[:, None] * V + iv[None, :], dv_c.to(dv.dtype.element_ty), mask=real[:, None])
        store_part(dbeta, row_s, db_c, real, blk * PART_B, MODE)
        if HAS_G:
            store_part(dg, row_t, dg_c, first, blk * PART_G, MODE)
    if WANT_DS0 and not CHUNK_PARALLEL:
        tl.store(ds0 + bh * K * V + s_offs, dS)


@triton.jit
def _dp_bwd_state_kernel(
    q, k, v, beta, g, do, dsT, dstates, ds0, scale, T, H, NH,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, CS: tl.constexpr, LOG2_CS: tl.constexpr,
    NHP: tl.constexpr, HAS_G: tl.constexpr, HAS_DST: tl.constexpr, WANT_DS0: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """The serial half of the two-pass backward: only dS = e^{GC} dS' + Qe^T dO - W^T dDelta with
    dDelta = M^T dO + Kb dS' (no S, no Delta), storing each chunk's incoming dS' (fp32)."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    NT = tl.cdiv(T * NHP, CS)
    ik = tl.arange(0, K)
    iv = i_v * BV + tl.arange(0, BV)
    s_offs = ik[:, None] * V + iv[None, :]
    bh = i_bh.to(tl.int64)
    if HAS_DST:
        dS = tl.load(dsT + bh * K * V + s_offs)
    else:
        dS = tl.zeros([K, BV], dtype=tl.float32)
    for i in range(NT):
        n = NT - 1 - i
        q_c, k_c, v_c, b_c, g_c, row_t, row_s, real, out, first = _load_chunk(
            q, k, v, beta, g, scale, i_b, i_h, n, T, H, NH, K, V, iv, CS, NHP, HAS_G
        )
        do_c = tl.load(do + row_t[:, None] * V + iv[None, :], mask=out[:, None], other=0.0).to(tl.float32)
        tl.store(dstates + (bh * NT + n) * K * V + s_offs, dS)
        G, D, KK, T_inv = _chunk_terms(k_c, b_c, g_c, CS, LOG2_CS, PREC)
        eG = tl.exp(G)
        GC = tl.sum(g_c, axis=0)
        W = tl.dot(T_inv, (b_c * eG)[:, None] * k_c, input_precision=PREC)
        M = tl.dot(q_c, tl.trans(k_c), input_precision=PREC) * D
        Kb = tl.exp(GC - G)[:, None] * k_c
        dDl = tl.dot(tl.trans(M), do_c, input_precision=PREC) + tl.dot(Kb, dS, input_precision=PREC)
        dS = tl.exp(GC) * dS + tl.dot(tl.trans(eG[:, None] * q_c), do_c, input_precision=PREC)
        dS -= tl.dot(tl.trans(W), dDl, input_precision=PREC)
    if WANT_DS0:
        tl.store(ds0 + bh * K * V + s_offs, dS)


# Read once at import: inside a compiled block, Dynamo cannot inspect the kernel object and
# would break the graph at the check.
_INTERPRETED = is_interpreted(_dp_fwd_kernel)

_FWD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor beta, Tensor? g, Tensor? state, float scale, int chunk, "
    "int block_v, int num_warps, bool save, int bwd_block_v, bool bwd_atomic, bool bwd_two_pass, int bwd_warps) "
    "-> (Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor beta, Tensor? g, Tensor do, Tensor? dsT, Tensor states, "
    "float scale, int chunk, int block_v, bool atomic, bool two_pass, int num_warps, bool want_ds0) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def _steps(NH: int) -> int:
    return triton.next_power_of_2(NH)


@torch.library.custom_op("skein::delta_product_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def delta_product_fwd(q, k, v, beta, g, state, scale, chunk, block_v, num_warps, save, *bwd_launch):
    """o [B, T, H, V], the final state [B, H, K, V] (fp32) and, when `save`, the chunk-start
    states [B * H, NT, K, V] (fp32; else an empty tensor). `bwd_launch` (V block, atomic
    reduction, two passes, warps) is kept for the backward."""
    B, T, NH, H, K = k.shape
    V = v.shape[-1]
    NT = triton.cdiv(T * _steps(NH), chunk)
    o = v.new_empty(B, T, H, V)
    sT = v.new_empty(B, H, K, V, dtype=torch.float32)
    states = v.new_empty((B * H, NT, K, V) if save else (0,), dtype=torch.float32)
    bv = block_v or block_v_for(V)
    _dp_fwd_kernel[(V // bv, B * H)](
        q, k, v, beta, g, state, o, sT, states if save else None, scale, T, H, NH,
        K=K, V=V, BV=bv, CS=chunk, LOG2_CS=chunk.bit_length() - 1, NHP=_steps(NH), HAS_G=g is not None,
        HAS_S0=state is not None, SAVE=save, PREC=dot_precision(v.dtype), num_warps=num_warps,
    )  # fmt: skip
    return o, sT, states


@delta_product_fwd.register_fake
def _(q, k, v, beta, g, state, scale, chunk, block_v, num_warps, save, *bwd_launch):
    B, T, NH, H, K = k.shape
    V = v.shape[-1]
    NT = (T * _steps(NH) + chunk - 1) // chunk
    states = v.new_empty((B * H, NT, K, V) if save else (0,), dtype=torch.float32)
    return v.new_empty(B, T, H, V), v.new_empty(B, H, K, V, dtype=torch.float32), states


@torch.library.custom_op("skein::delta_product_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def delta_product_bwd(
    q, k, v, beta, g, do, dsT, states, scale, chunk, block_v, atomic, two_pass, num_warps, want_ds0
):
    """Gradients of q, k, v, beta, g (each in its input's dtype; an empty tensor for g = None)
    and of the initial state (fp32 [B, H, K, V], or an empty tensor unless `want_ds0`)."""
    B, T, NH, H, K = k.shape
    V = v.shape[-1]
    bv = block_v or V
    nv = V // bv
    mode = reduce_mode(nv, atomic)
    parts = [grad_parts(x, nv, mode) for x in (q, k, beta)]
    dg = grad_parts(g, nv, mode) if g is not None else None
    dv = torch.empty_like(v)
    ds0 = v.new_empty((B, H, K, V) if want_ds0 else (0,), dtype=torch.float32)
    NT = triton.cdiv(T * _steps(NH), chunk)
    consts = {
        "K": K, "V": V, "BV": bv, "CS": chunk, "LOG2_CS": chunk.bit_length() - 1, "NHP": _steps(NH),
        "HAS_G": g is not None, "HAS_DST": dsT is not None, "WANT_DS0": want_ds0,
        "PREC": dot_precision(v.dtype), "num_warps": num_warps,
    }  # fmt: skip
    dstates = None
    if two_pass:
        dstates = torch.empty_like(states)
        _dp_bwd_state_kernel[(nv, B * H)](
            q, k, v, beta, g, do, dsT, dstates, ds0 if want_ds0 else None, scale, T, H, NH, **consts
        )
    _dp_bwd_kernel[(nv, B * H, NT if two_pass else 1)](
        q, k, v, beta, g, do, dsT, states, dstates, parts[0], parts[1], dv, parts[2], dg,
        ds0 if want_ds0 else None, scale, T, H, NH, q.numel(), k.numel(), beta.numel(),
        0 if g is None else g.numel(), MODE=mode, CHUNK_PARALLEL=two_pass, **consts,
    )  # fmt: skip
    dq, dk, dbeta = (sum_parts(p, x, mode) for p, x in zip(parts, (q, k, beta)))
    dg = sum_parts(dg, g, mode) if g is not None else v.new_empty(0)
    return dq, dk, dv, dbeta, dg, ds0


@delta_product_bwd.register_fake
def _(q, k, v, beta, g, do, dsT, states, scale, chunk, block_v, atomic, two_pass, num_warps, want_ds0):
    B, _, _, H, K = k.shape
    V = v.shape[-1]
    dg = torch.empty_like(g) if g is not None else v.new_empty(0)
    ds0 = v.new_empty((B, H, K, V) if want_ds0 else (0,), dtype=torch.float32)
    return (*(torch.empty_like(x) for x in (q, k, v, beta)), dg, ds0)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, beta, g, state, scale, chunk, _, _, _, *bwd_launch = inputs
    ctx.save_for_backward(q, k, v, beta, g, output[2])
    ctx.scale, ctx.chunk, ctx.bwd_launch = scale, chunk, bwd_launch
    ctx.has_state, ctx.has_g = state is not None, g is not None


def _backward(ctx, do, dsT, _dstates):
    q, k, v, beta, g, states = ctx.saved_tensors
    bv, atomic, two_pass, warps = ctx.bwd_launch
    want_ds0 = ctx.has_state and ctx.needs_input_grad[5]
    B, T, _, H, _ = k.shape
    do = v.new_zeros(B, T, H, v.shape[-1]) if do is None else do.contiguous()
    dsT = None if dsT is None else dsT.contiguous()
    dq, dk, dv, dbeta, dg, ds0 = torch.ops.skein.delta_product_bwd(
        q, k, v, beta, g, do, dsT, states, ctx.scale, ctx.chunk, bv, atomic, two_pass, warps, want_ds0
    )
    return (dq, dk, dv, dbeta, dg if ctx.has_g else None, ds0 if want_ds0 else None, *([None] * 9))


delta_product_fwd.register_autograd(_backward, setup_context=_setup_context)


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
    launch: DeltaProductLaunch | None = None,
) -> tuple[Tensor, Tensor]:
    """DeltaProduct with the chunked Triton kernels; same math and conventions as delta_product_naive.

    Args:
        q: [B, T, H, K]; k: [B, T, n_h, H, K]; v: [B, T, n_h, H, V]; beta: [B, T, n_h, H]; each
            bf16, fp16 or fp32 (computed in fp32; products on TF32 tensor cores unless v is fp32).
        g: [B, T, H] log forget gate (<= 0), applied once per token before its n_h steps; None
            for no gate.
        state: [B, H, K, V] initial state (cast to fp32), or None for zeros.
        scale: multiplies q; None means K ** -0.5.
        block_v: V columns per forward program (power of two, 16..V); None takes launch's.
        launch: chunk size, V splits, warps (DeltaProductLaunch); None means DEFAULT_LAUNCH.
    Returns:
        o: [B, T, H, V] in v's dtype; the final state [B, H, K, V] in fp32. Differentiable in
        every tensor argument, the initial state included.
    Raises:
        ValueError: unsupported device, dtype, shape, head size, n_h or launch parameter.
    """
    op = "chunk_delta_product"
    check_device(op, _INTERPRETED, q=q, k=k, v=v, beta=beta, g=g, state=state)
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
    launch = resolve_launch(op, launch, DEFAULT_LAUNCH, block_v, V)
    state = prepare_state(op, state, (B, H, K, V))
    q, k, v, beta = (x.contiguous() for x in (q, k, v, beta))
    g = g.contiguous() if g is not None else None
    scale = K**-0.5 if scale is None else float(scale)
    save = backward_can_follow(q, k, v, beta, g, state)
    bv = launch.bwd_block_v or V
    warps = launch.bwd_warps_for(K, bv)
    o, sT, _ = delta_product_fwd(
        q, k, v, beta, g, state, scale, launch.chunk, launch.block_v, launch.fwd_warps, save,
        bv, launch.bwd_reduce == "atomic", launch.bwd_two_pass, warps,
    )  # fmt: skip
    return o, sT


__all__ = [
    "CHUNK",
    "CHUNKS",
    "DEFAULT_LAUNCH",
    "MAX_HOUSEHOLDER",
    "DeltaProductLaunch",
    "chunk_delta_product",
]
