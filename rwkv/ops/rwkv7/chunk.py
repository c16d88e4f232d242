"""RWKV-7 WKV as chunked Triton kernels, registered as the custom ops skein::rwkv7_fwd and
skein::rwkv7_bwd (with fake and autograd implementations, so torch.compile traces through them).

Math and design: README.md beside this file. Per chunk of C tokens (16, 32 or 64) the delta-rule
updates are folded into a WY form, (I - M_ab)^-1, so the chunk costs a handful of tile products on
tensor cores; the [K, V] state stays in registers across chunks and is written once per chunk
(fp32) for the backward pass, which walks the chunks in reverse and recomputes everything else.
Both passes split V across programs; the backward's reductions over V are summed after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from skein.rwkv.ops.common.chunk_launch import (
    CHUNKS,
    DOTS,
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
    mm,
    reduce_mode,
    store_part,
    sum_parts,
    tri_inverse,
)
from skein.rwkv.ops.rwkv7 import bwd_cuda

CHUNK = 16
"""Default tokens per chunk. exp(+-g) factors span half a chunk's total log decay, so per-token w
must satisfy (chunk / 2) * |w| < ~80 (fp32 exp range): RWKV-7's w >= -exp(-0.5) is far inside
for every chunk size offered (16, 32, 64)."""


@dataclass(frozen=True)
class Rwkv7Launch(ChunkLaunch):
    """Launch parameters of the RWKV-7 kernels (ChunkLaunch's, and those below); every choice
    computes the same function.

    scripts/gpu_kernel_sweep.py times the variants; DEFAULT_LAUNCH holds the chosen one.
    """

    chunk: int = CHUNK
    bwd_stages: int = 0
    """Software-pipelining stages of the backward; 0 lets Triton choose (1 for large fp32 tiles)."""
    bwd_kernel: str = "triton"
    """Backward kernel: "triton" (the chunked kernels here) or "cuda" (bwd_cuda.py: the token
    recurrence in reverse, built with nvcc on first use; K = V in 32 or 64, chunk 16, no V split,
    r, w, k, v, a, b in one dtype, bf16 or fp32). Triton is the faster on an H200 (docs/kernels.md)."""
    cuda_config: int = bwd_cuda.DEFAULT_CONFIG
    """Threads per state row and column of the CUDA backward (bwd_cuda.CONFIGS)."""
    dots: str = "auto"
    """Operands of the Triton kernels' tile products: "auto" (fp32 tiles, TF32 products for
    16-bit inputs and tf32x3 for fp32 ones) or "bf16" (tiles rounded to bf16, fp32 accumulation,
    as RWKV-LM-style tensor-core kernels do; less precise)."""

    def check(self, V: int, op: str = "chunk_rwkv7") -> None:
        super().check(V, op)
        if self.dots not in DOTS:
            raise ValueError(f"{op}: dots = {self.dots!r} must be one of {DOTS}")
        if self.bwd_kernel not in bwd_cuda.KERNELS:
            raise ValueError(f"{op}: bwd_kernel = {self.bwd_kernel!r} must be one of {bwd_cuda.KERNELS}")
        configs = bwd_cuda.CONFIGS.get(V, (bwd_cuda.DEFAULT_CONFIG,))
        if self.cuda_config not in configs:
            raise ValueError(f"{op}: cuda_config = {self.cuda_config} must be one of {configs} for V = {V}")


DEFAULT_LAUNCH = Rwkv7Launch()
LAUNCH_BY_DOTS = {d: DEFAULT_LAUNCH if d == DEFAULT_LAUNCH.dots else Rwkv7Launch(dots=d) for d in DOTS}
"""The default launch for each `dots`, built once (compiled callers look it up, never build one)."""


def tile_precision(dots: str, dtype: torch.dtype) -> str:
    """The kernels' PREC for a launch's `dots` and the inputs' dtype (see mm)."""
    if dots == "bf16":
        return "bf16_ieee" if _INTERPRETED else "bf16"
    return dot_precision(dtype)


@triton.jit
def _load_chunk(r, w, k, a, b, v, pk, pv, mt):
    """One chunk of the six inputs as fp32 tiles (rows past T read as 0)."""
    r_c = tl.load(r + pk, mask=mt, other=0.0).to(tl.float32)
    w_c = tl.load(w + pk, mask=mt, other=0.0).to(tl.float32)
    k_c = tl.load(k + pk, mask=mt, other=0.0).to(tl.float32)
    a_c = tl.load(a + pk, mask=mt, other=0.0).to(tl.float32)
    b_c = tl.load(b + pk, mask=mt, other=0.0).to(tl.float32)
    v_c = tl.load(v + pv, mask=mt, other=0.0).to(tl.float32)
    return r_c, w_c, k_c, a_c, b_c, v_c


@triton.jit
def _chunk_terms(r_c, w_c, k_c, a_c, b_c, scale):
    """Decay-weighted copies of one chunk's [C, K] tiles (README, "Chunk form").

    g = inclusive cumsum of w, gp = exclusive, gC = chunk total, ref = gC / 2. Products across
    two time steps use e^{x_t - ref} e^{ref - y_s}, so no factor exceeds e^{|gC| / 2}.
    """
    g = tl.cumsum(w_c, axis=0)
    gp = g - w_c
    gC = tl.sum(w_c, axis=0)
    ref = 0.5 * gC[None, :]
    r_s = r_c * scale
    A0 = a_c * tl.exp(gp)
    R0 = r_s * tl.exp(g)
    At = a_c * tl.exp(gp - ref)
    Rt = r_s * tl.exp(g - ref)
    e_neg = tl.exp(ref - g)
    e_end = tl.exp(gC[None, :] - g)
    return g, gp, gC, A0, R0, At, Rt, b_c * e_neg, k_c * e_neg, b_c * e_end, k_c * e_end


@triton.jit
def _rwkv7_fwd_kernel(
    r, w, k, v, a, b, s0, o, sT, states, u, scale, T, H,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, LOG2_C: tl.constexpr,
    HAS_S0: tl.constexpr, SAVE: tl.constexpr, SAVE_U: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    NT = tl.cdiv(T, C)
    tc = tl.arange(0, C)
    ik = tl.arange(0, K)
    iv = i_v * BV + tl.arange(0, BV)
    strict = tc[:, None] > tc[None, :]
    incl = tc[:, None] >= tc[None, :]
    s_offs = ik[:, None] * V + iv[None, :]
    bh = i_bh.to(tl.int64)
    if HAS_S0:
        S = tl.load(s0 + bh * K * V + s_offs)
    else:
        S = tl.zeros([K, BV], dtype=tl.float32)
    for n in range(NT):
        t = n * C + tc
        mt = (t < T)[:, None]
        row = (i_b * T + t).to(tl.int64) * H + i_h
        pk = row[:, None] * K + ik[None, :]
        pv = row[:, None] * V + iv[None, :]
        r_c, w_c, k_c, a_c, b_c, v_c = _load_chunk(r, w, k, a, b, v, pk, pv, mt)
        if SAVE:
            tl.store(states + (bh * NT + n) * K * V + s_offs, S)
        g, gp, gC, A0, R0, At, Rt, Bh, Kh, Bb, Kb = _chunk_terms(r_c, w_c, k_c, a_c, b_c, scale)
        M_ab = tl.where(strict, mm(At, tl.trans(Bh), PREC), 0.0)
        M_ak = tl.where(strict, mm(At, tl.trans(Kh), PREC), 0.0)
        M_rb = tl.where(incl, mm(Rt, tl.trans(Bh), PREC), 0.0)
        M_rk = tl.where(incl, mm(Rt, tl.trans(Kh), PREC), 0.0)
        P_inv = tri_inverse(M_ab, C, LOG2_C)
        # u_t = S_{t-1}^T a_t for the whole chunk: U = (I - M_ab)^-1 (A0 S + M_ak V)
        X = mm(A0, S, PREC) + mm(M_ak, v_c, PREC)
        U = mm(P_inv, X, PREC)
        if SAVE_U:
            tl.store(u + pv, U, mask=mt)
        O = mm(R0, S, PREC)
        O += mm(M_rb, U, PREC) + mm(M_rk, v_c, PREC)
        tl.store(o + pv, O.to(o.dtype.element_ty), mask=mt)
        S = tl.exp(gC)[:, None] * S
        S += mm(tl.trans(Bb), U, PREC) + mm(tl.trans(Kb), v_c, PREC)
    tl.store(sT + bh * K * V + s_offs, S)


@triton.jit
def _rwkv7_bwd_kernel(
    r, w, k, v, a, b, do, dsT, states, dstates, dr, dw, dk, dv, da, db, ds0, scale, T, H, PART,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, LOG2_C: tl.constexpr,
    HAS_DST: tl.constexpr, WANT_DS0: tl.constexpr, PREC: tl.constexpr, MODE: tl.constexpr,
    CHUNK_PARALLEL: tl.constexpr,
):  # fmt: skip
    """All gradients, walking the chunks in reverse with dS in registers; or, with
    CHUNK_PARALLEL, one chunk per program (axis 2) with its dS' read from `dstates`, which
    _rwkv7_bwd_state_kernel wrote."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    NT = tl.cdiv(T, C)
    tc = tl.arange(0, C)
    ik = tl.arange(0, K)
    iv = i_v * BV + tl.arange(0, BV)
    part = i_v.to(tl.int64) * PART
    strict = tc[:, None] > tc[None, :]
    incl = tc[:, None] >= tc[None, :]
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
        t = n * C + tc
        mt = (t < T)[:, None]
        row = (i_b * T + t).to(tl.int64) * H + i_h
        pk = row[:, None] * K + ik[None, :]
        pv = row[:, None] * V + iv[None, :]
        r_c, w_c, k_c, a_c, b_c, v_c = _load_chunk(r, w, k, a, b, v, pk, pv, mt)
        do_c = tl.load(do + pv, mask=mt, other=0.0).to(tl.float32)
        S = tl.load(states + (bh * NT + n) * K * V + s_offs)
        if CHUNK_PARALLEL:
            dS = tl.load(dstates + (bh * NT + n) * K * V + s_offs)
        g, gp, gC, A0, R0, At, Rt, Bh, Kh, Bb, Kb = _chunk_terms(r_c, w_c, k_c, a_c, b_c, scale)
        dec = tl.exp(gC)
        M_ab = tl.where(strict, mm(At, tl.trans(Bh), PREC), 0.0)
        M_ak = tl.where(strict, mm(At, tl.trans(Kh), PREC), 0.0)
        M_rb = tl.where(incl, mm(Rt, tl.trans(Bh), PREC), 0.0)
        M_rk = tl.where(incl, mm(Rt, tl.trans(Kh), PREC), 0.0)
        P_inv = tri_inverse(M_ab, C, LOG2_C)
        X = mm(A0, S, PREC) + mm(M_ak, v_c, PREC)
        U = mm(P_inv, X, PREC)
        # reverse of O = R0 S + M_rb U + M_rk V and S' = dec S + Bb^T U + Kb^T V (README, "Backward").
        # U, dU, dX, dV and dS are column-wise in V; the r, w, k, a, b gradients sum over V, so with
        # V split they are this block's parts;
        # each gradient is folded into its accumulators at once to keep few tiles alive.
        # A tile x e^{phi} gives dx = dX e^{phi} and dphi = dX * X; ref cancels (outputs do not depend on it)
        dU = mm(tl.trans(M_rb), do_c, PREC) + mm(Bb, dS, PREC)
        dV = mm(tl.trans(M_rk), do_c, PREC) + mm(Kb, dS, PREC)
        dBb = mm(U, tl.trans(dS), PREC)
        dKb = mm(v_c, tl.trans(dS), PREC)
        e_end = tl.exp(gC[None, :] - g)
        db_c = dBb * e_end
        dk_c = dKb * e_end
        t_end = dBb * Bb + dKb * Kb
        d_g = -t_end
        d_gC = tl.sum(t_end, axis=0) + tl.sum(S * dS, axis=1) * dec
        dX = mm(tl.trans(P_inv), dU, PREC)
        dV += mm(tl.trans(M_ak), dX, PREC)
        tl.store(dv + pv, dV.to(dv.dtype.element_ty), mask=mt)
        if not CHUNK_PARALLEL:
            dS = dec[:, None] * dS + mm(tl.trans(R0), do_c, PREC)
            dS += mm(tl.trans(A0), dX, PREC)
        dR0 = mm(do_c, tl.trans(S), PREC)
        dA0 = mm(dX, tl.trans(S), PREC)
        dr_c = dR0 * tl.exp(g)
        da_c = dA0 * tl.exp(gp)
        d_g += dR0 * R0
        d_gp = dA0 * A0
        dM_rb = tl.where(incl, mm(do_c, tl.trans(U), PREC), 0.0)
        dM_rk = tl.where(incl, mm(do_c, tl.trans(v_c), PREC), 0.0)
        dM_ab = tl.where(strict, mm(dX, tl.trans(U), PREC), 0.0)
        dM_ak = tl.where(strict, mm(dX, tl.trans(v_c), PREC), 0.0)
        ref = 0.5 * gC[None, :]
        dRt = mm(dM_rb, Bh, PREC) + mm(dM_rk, Kh, PREC)
        dr_c = scale * (dr_c + dRt * tl.exp(g - ref))
        d_g += dRt * Rt
        dAt = mm(dM_ab, Bh, PREC) + mm(dM_ak, Kh, PREC)
        da_c += dAt * tl.exp(gp - ref)
        d_gp += dAt * At
        e_neg = tl.exp(ref - g)
        dBh = mm(tl.trans(dM_rb), Rt, PREC)
        dBh += mm(tl.trans(dM_ab), At, PREC)
        db_c += dBh * e_neg
        d_g -= dBh * Bh
        dKh = mm(tl.trans(dM_rk), Rt, PREC)
        dKh += mm(tl.trans(dM_ak), At, PREC)
        dk_c += dKh * e_neg
        d_g -= dKh * Kh
        # g_t = sum_{s<=t} w_s, gp_t = sum_{s<t} w_s, gC = sum_s w_s
        tot = d_g + d_gp
        dw_c = tl.sum(tot, axis=0)[None, :] - tl.cumsum(tot, axis=0) + tot - d_gp + d_gC[None, :]
        mk = mt & (ik < K)[None, :]
        store_part(dr, pk, dr_c, mk, part, MODE)
        store_part(dw, pk, dw_c, mk, part, MODE)
        store_part(dk, pk, dk_c, mk, part, MODE)
        store_part(da, pk, da_c, mk, part, MODE)
        store_part(db, pk, db_c, mk, part, MODE)
    if WANT_DS0 and not CHUNK_PARALLEL:
        tl.store(ds0 + bh * K * V + s_offs, dS)


@triton.jit
def _rwkv7_bwd_state_kernel(
    r, w, k, a, b, do, dsT, dstates, ds0, scale, T, H,
    K: tl.constexpr, V: tl.constexpr, BV: tl.constexpr, C: tl.constexpr, LOG2_C: tl.constexpr,
    HAS_DST: tl.constexpr, WANT_DS0: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """The serial half of the two-pass backward: only the reverse state recurrence
    dS = e^{gC} dS' + R0^T dO + A0^T (I - M_ab)^{-T} (M_rb^T dO + Bb dS'), storing each chunk's
    incoming dS' (fp32) for the chunk-parallel pass. It needs neither S nor v: U does not enter."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1)
    i_b = i_bh // H
    i_h = i_bh % H
    NT = tl.cdiv(T, C)
    tc = tl.arange(0, C)
    ik = tl.arange(0, K)
    iv = i_v * BV + tl.arange(0, BV)
    strict = tc[:, None] > tc[None, :]
    incl = tc[:, None] >= tc[None, :]
    s_offs = ik[:, None] * V + iv[None, :]
    bh = i_bh.to(tl.int64)
    if HAS_DST:
        dS = tl.load(dsT + bh * K * V + s_offs)
    else:
        dS = tl.zeros([K, BV], dtype=tl.float32)
    for i in range(NT):
        n = NT - 1 - i
        t = n * C + tc
        mt = (t < T)[:, None]
        row = (i_b * T + t).to(tl.int64) * H + i_h
        pk = row[:, None] * K + ik[None, :]
        pv = row[:, None] * V + iv[None, :]
        r_c = tl.load(r + pk, mask=mt, other=0.0).to(tl.float32)
        w_c = tl.load(w + pk, mask=mt, other=0.0).to(tl.float32)
        k_c = tl.load(k + pk, mask=mt, other=0.0).to(tl.float32)
        a_c = tl.load(a + pk, mask=mt, other=0.0).to(tl.float32)
        b_c = tl.load(b + pk, mask=mt, other=0.0).to(tl.float32)
        do_c = tl.load(do + pv, mask=mt, other=0.0).to(tl.float32)
        tl.store(dstates + (bh * NT + n) * K * V + s_offs, dS)
        g, gp, gC, A0, R0, At, Rt, Bh, Kh, Bb, Kb = _chunk_terms(r_c, w_c, k_c, a_c, b_c, scale)
        M_ab = tl.where(strict, mm(At, tl.trans(Bh), PREC), 0.0)
        M_rb = tl.where(incl, mm(Rt, tl.trans(Bh), PREC), 0.0)
        P_inv = tri_inverse(M_ab, C, LOG2_C)
        dU = mm(tl.trans(M_rb), do_c, PREC) + mm(Bb, dS, PREC)
        dX = mm(tl.trans(P_inv), dU, PREC)
        dS = tl.exp(gC)[:, None] * dS + mm(tl.trans(R0), do_c, PREC)
        dS += mm(tl.trans(A0), dX, PREC)
    if WANT_DS0:
        tl.store(ds0 + bh * K * V + s_offs, dS)


def bwd_launch_options(K: int, BV: int, dtype: torch.dtype, launch: Rwkv7Launch) -> dict[str, int]:
    """num_warps / num_stages of the backward kernel, which holds [K, BV] tiles of the state and
    its gradient per program. At K = BV = 128 in fp32 the default pipelining asks for 256 KiB of
    shared memory (an H100 has 227 KiB per block); one stage fits."""
    opts = {"num_warps": launch.bwd_warps_for(K, BV)}
    if launch.bwd_stages:
        opts["num_stages"] = launch.bwd_stages
    elif dtype == torch.float32 and K * BV >= 128 * 128:
        opts["num_stages"] = 1
    return opts


# Read once at import: inside a compiled block, Dynamo cannot inspect the kernel object and
# would break the graph at the check.
_INTERPRETED = is_interpreted(_rwkv7_fwd_kernel)

_FWD_SCHEMA = (
    "(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor? state, float scale, "
    "int chunk, int block_v, int num_warps, bool save, bool save_u, int bwd_block_v, bool bwd_atomic, "
    'bool bwd_two_pass, int bwd_warps, int bwd_stages, int cuda_config, str dots="auto") '
    "-> (Tensor, Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor r, Tensor w, Tensor k, Tensor v, Tensor a, Tensor b, Tensor do, Tensor? dsT, Tensor states, "
    "Tensor sT, Tensor u, float scale, int chunk, int block_v, bool atomic, bool two_pass, int num_warps, "
    'int num_stages, int cuda_config, bool want_ds0, str dots="auto") '
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("skein::rwkv7_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def rwkv7_fwd(
    r, w, k, v, a, b, state, scale, chunk, block_v, num_warps, save, save_u,
    bwd_block_v, bwd_atomic, bwd_two_pass, bwd_warps, bwd_stages, cuda_config, dots="auto",
):  # fmt: skip
    """o [B, T, H, V], the final state [B, H, K, V] (fp32), when `save` the chunk-start states
    [B * H, NT, K, V] and when `save_u` every u_t = S_{t-1}^T a_t [B, T, H, V] (fp32; else empty
    tensors). The bwd_* arguments and `cuda_config` are kept for the backward (setup_context),
    `dots` (Rwkv7Launch.dots) serves both passes; `save_u` picks the CUDA backward."""
    B, T, H, K = r.shape
    V = v.shape[-1]
    NT = triton.cdiv(T, chunk)
    o = torch.empty_like(v)
    sT = v.new_empty(B, H, K, V, dtype=torch.float32)
    states = v.new_empty((B * H, NT, K, V) if save else (0,), dtype=torch.float32)
    u = v.new_empty((B, T, H, V) if save_u else (0,), dtype=torch.float32)
    bv = block_v or block_v_for(V)
    _rwkv7_fwd_kernel[(V // bv, B * H)](
        r, w, k, v, a, b, state, o, sT, states if save else None, u if save_u else None, scale, T, H,
        K=K, V=V, BV=bv, C=chunk, LOG2_C=chunk.bit_length() - 1,
        HAS_S0=state is not None, SAVE=save, SAVE_U=save_u, PREC=tile_precision(dots, v.dtype), num_warps=num_warps,
    )  # fmt: skip
    return o, sT, states, u


@rwkv7_fwd.register_fake
def _(r, w, k, v, a, b, state, scale, chunk, block_v, num_warps, save, save_u, *bwd_launch):
    B, T, H, K = r.shape
    V = v.shape[-1]
    NT = (T + chunk - 1) // chunk
    states = v.new_empty((B * H, NT, K, V) if save else (0,), dtype=torch.float32)
    u = v.new_empty((B, T, H, V) if save_u else (0,), dtype=torch.float32)
    return torch.empty_like(v), v.new_empty(B, H, K, V, dtype=torch.float32), states, u


@torch.library.custom_op("skein::rwkv7_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def rwkv7_bwd(
    r,
    w,
    k,
    v,
    a,
    b,
    do,
    dsT,
    states,
    sT,
    u,
    scale,
    chunk,
    block_v,
    atomic,
    two_pass,
    num_warps,
    num_stages,
    cuda_config,
    want_ds0,
    dots="auto",
):
    """Gradients of r, w, k, v, a, b (each in its input's dtype) and of the initial state (fp32
    [B, H, K, V], or an empty tensor unless `want_ds0`). With `u` saved (not empty) the CUDA
    kernel runs (bwd_cuda.py)."""
    if u.numel():
        grads = bwd_cuda.rwkv7_bwd_cuda(
            (r, w, k, v, a, b), do, u, states, sT, dsT, scale, want_ds0, cuda_config
        )
        return tuple(grads)
    B, T, H, K = r.shape
    V = v.shape[-1]
    bv = block_v or V
    nv = V // bv
    mode = reduce_mode(nv, atomic)
    kin = (r, w, k, a, b)
    kgrads = [grad_parts(x, nv, mode) for x in kin]
    dv = torch.empty_like(v)
    ds0 = v.new_empty((B, H, K, V) if want_ds0 else (0,), dtype=torch.float32)
    opts = {"num_warps": num_warps}
    if num_stages:
        opts["num_stages"] = num_stages
    dr, dw, dk, da, db = kgrads
    NT = triton.cdiv(T, chunk)
    consts = {
        "K": K,
        "V": V,
        "BV": bv,
        "C": chunk,
        "LOG2_C": chunk.bit_length() - 1,
        "PREC": tile_precision(dots, v.dtype),
    }
    dstates = None
    if two_pass:
        dstates = torch.empty_like(states)
        _rwkv7_bwd_state_kernel[(nv, B * H)](
            r, w, k, a, b, do, dsT, dstates, ds0 if want_ds0 else None, scale, T, H,
            HAS_DST=dsT is not None, WANT_DS0=want_ds0, **consts, **opts,
        )  # fmt: skip
    _rwkv7_bwd_kernel[(nv, B * H, NT if two_pass else 1)](
        r, w, k, v, a, b, do, dsT, states, dstates, dr, dw, dk, dv, da, db, ds0 if want_ds0 else None,
        scale, T, H, B * T * H * K, HAS_DST=dsT is not None, WANT_DS0=want_ds0, MODE=mode,
        CHUNK_PARALLEL=two_pass, **consts, **opts,
    )  # fmt: skip
    dr, dw, dk, da, db = (sum_parts(g, x, mode) for g, x in zip(kgrads, kin))
    return dr, dw, dk, dv, da, db, ds0


@rwkv7_bwd.register_fake
def _(
    r,
    w,
    k,
    v,
    a,
    b,
    do,
    dsT,
    states,
    sT,
    u,
    scale,
    chunk,
    block_v,
    atomic,
    two_pass,
    num_warps,
    num_stages,
    cuda_config,
    want_ds0,
    dots="auto",
):
    B, _, H, K = r.shape
    V = v.shape[-1]
    ds0 = v.new_empty((B, H, K, V) if want_ds0 else (0,), dtype=torch.float32)
    return (*(torch.empty_like(x) for x in (r, w, k, v, a, b)), ds0)


def _setup_context(ctx, inputs, output) -> None:
    r, w, k, v, a, b, state, scale, chunk, _, _, _, save_u, *bwd_launch = inputs
    _, sT, states, u = output
    # the final state is kept only for the CUDA backward (u not empty), which starts from it
    ctx.save_for_backward(r, w, k, v, a, b, sT if save_u else u, states, u)
    ctx.scale, ctx.chunk, ctx.has_state, ctx.bwd_launch = scale, chunk, state is not None, bwd_launch
    ctx.non_tensor_inputs = len(inputs) - 7


def _backward(ctx, do, dsT, _dstates, _du):
    r, w, k, v, a, b, sT, states, u = ctx.saved_tensors
    bv, atomic, two_pass, warps, stages, cuda_config, *dots = ctx.bwd_launch
    want_ds0 = ctx.has_state and ctx.needs_input_grad[6]
    do = torch.zeros_like(v) if do is None else do.contiguous()
    dsT = None if dsT is None else dsT.contiguous()
    *grads, ds0 = torch.ops.skein.rwkv7_bwd(
        r, w, k, v, a, b, do, dsT, states, sT, u, ctx.scale, ctx.chunk, bv, atomic, two_pass, warps, stages,
        cuda_config, want_ds0, *dots,
    )  # fmt: skip
    return (*grads, ds0 if want_ds0 else None, *([None] * ctx.non_tensor_inputs))


rwkv7_fwd.register_autograd(_backward, setup_context=_setup_context)


def chunk_rwkv7(
    r: Tensor,
    w: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    scale: float = 1.0,
    *,
    block_v: int | None = None,
    launch: Rwkv7Launch | None = None,
) -> tuple[Tensor, Tensor]:
    """RWKV-7 WKV with the chunked Triton kernels; same math and conventions as rwkv7_naive.

    Args:
        r, w, k, a, b: [B, T, H, K]; v: [B, T, H, V]; each bf16, fp16 or fp32 (computed in fp32;
            products on TF32 tensor cores unless v is fp32). w is the log decay (<= 0).
        state: [B, H, K, V] initial state (cast to fp32), or None for zeros.
        scale: multiplies r.
        block_v: V columns per forward program (power of two, 16..V); None takes launch's.
        launch: chunk size, V splits, warps (Rwkv7Launch); None means DEFAULT_LAUNCH.
    Returns:
        o: [B, T, H, V] in v's dtype; the final state [B, H, K, V] in fp32. Differentiable in
        every tensor argument, the initial state included.
    Raises:
        ValueError: unsupported device, dtype, shape, head size or launch parameter.
    """
    op = "chunk_rwkv7"
    check_device(op, _INTERPRETED, r=r, w=w, k=k, v=v, a=a, b=b, state=state)
    check_dtypes(op, r=r, w=w, k=k, v=v, a=a, b=b)
    if r.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"{op}: r and v must be [B, T, H, K] / [B, T, H, V], got {tuple(r.shape)}, {tuple(v.shape)}"
        )
    B, T, H, K = r.shape
    V = v.shape[-1]
    for name, x in (("w", w), ("k", k), ("a", a), ("b", b)):
        check_shape(op, name, x, (B, T, H, K))
    check_shape(op, "v", v, (B, T, H, V))
    check_length(op, T)
    check_head_size(op, "K", K)
    check_head_size(op, "V", V)
    launch = resolve_launch(op, launch, DEFAULT_LAUNCH, block_v, V)
    state = prepare_state(op, state, (B, H, K, V))
    r, w, k, v, a, b = (x.contiguous() for x in (r, w, k, v, a, b))
    # per-chunk states are kept only when a backward pass can follow
    save = backward_can_follow(r, w, k, v, a, b, state)
    bv = launch.bwd_block_v or V
    opts = bwd_launch_options(K, bv, v.dtype, launch)
    save_u = save and _cuda_backward(launch, (r, w, k, a, b), v)
    o, sT, _, _ = rwkv7_fwd(
        r, w, k, v, a, b, state, float(scale), launch.chunk, launch.block_v, launch.fwd_warps, save, save_u,
        bv, launch.bwd_reduce == "atomic", launch.bwd_two_pass, opts["num_warps"], opts.get("num_stages", 0),
        launch.cuda_config, launch.dots,
    )  # fmt: skip
    return o, sT


def _cuda_backward(launch: Rwkv7Launch, kin: tuple[Tensor, ...], v: Tensor) -> bool:
    """Whether the backward runs the CUDA kernel; raises if it was asked for and cannot take
    these inputs. The kernel is built at the first backward that runs it."""
    if launch.bwd_kernel == "triton":
        return False
    why = bwd_cuda.unsupported(kin, v, launch.chunk, launch.bwd_block_v, launch.bwd_two_pass)
    if why:
        raise ValueError(f"chunk_rwkv7: bwd_kernel='cuda' cannot take {why}")
    return True


__all__ = [
    "CHUNK",
    "CHUNKS",
    "DEFAULT_LAUNCH",
    "DOTS",
    "LAUNCH_BY_DOTS",
    "Rwkv7Launch",
    "chunk_rwkv7",
    "tile_precision",
]
