"""RWKV-4 WKV as fused recurrent Triton kernels (forward and backward), fp32 compute, registered
as the custom ops skein::wkv4_fwd and skein::wkv4_bwd (fake and autograd implementations
included, so torch.compile traces through them).

One program owns a block of channels of one sequence and walks time; the running-max state
(aa, bb, pp) of naive.wkv4_naive stays in registers. Time is read in tiles of TB steps (one
coalesced load per tile, the next tile requested before the current one is used), and the
forward writes the state at every tile start: the backward replays a tile from that checkpoint,
keeps the TB per-step states in registers and then runs the reverse recurrence through it.

Backward (exact gradient of the (aa, bb, pp) representation). One step, with x = w + pp0:
    pp1 = max(x, k), f = e^{x - pp1}, e = e^{k - pp1}, aa1 = f aa0 + e v, bb1 = f bb0 + e
    y = (e1 aa0 + e2 v) / (e1 bb0 + e2), e1 = e^{pp0 - p}, e2 = e^{u + k - p}, p = max(pp0, u + k)
Given (ga, gb, gp) = dL/d(aa1, bb1, pp1): the total through pp1 is gp - ga aa1 - gb bb1 and goes
to whichever of x, k won the max; ga0 = f ga + e1 gy / den, gb0 = f gb - e1 gy y / den,
gp0 = dL/dx + e1 (gy / den)(aa0 - y bb0) (y depends on the state only through aa e^pp).
Per step the adjoint map is affine, (ga0, gb0, gp0) = J (ga, gb, gp) + const, with
J = [[f, 0, 0], [0, f, 0], [alpha, beta, chi]], chi = [x won the max], alpha = f aa0 - chi (f aa0 + e v),
beta = f bb0 - chi (f bb0 + e); products of such matrices keep that shape, so a time segment's
map is four numbers (F, Pa, Pb, Wn): the time-split backward runs each segment from a zero
adjoint (its constant part and map), chains the segments from the last, then reruns each from
its true end adjoint. Every exponent above is <= 0, so nothing overflows. Of each pair e^{x - max}, e^{y - max} one is
exactly 1: a step costs one exponential per pair (_exp_pair).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from skein.rwkv.ops.common.kernel_checks import check_device, check_dtypes, check_length, check_shape
from skein.rwkv.ops.common.triton_utils import is_interpreted
from skein.rwkv.ops.wkv4.naive import Wkv4State

TIME_TILE = 8
"""Time steps per load and per backward checkpoint (the backward keeps 11 such [TB, BC] tiles in
registers; 8 x 32 channels per warp compiles for sm_90 without spills)."""


TIME_SPLIT = 8
"""Default time segments of the forward and backward (fused_wkv4's time_split). On an H200 at
B=8 T=4096 C=2048 (fp32) 8 segments took the forward from 1.83 to 0.91 ms and forward + backward
from 5.94 to 5.17 ms; 32 segments gave 0.86 / 5.24 ms (docs/kernels.md)."""


@triton.jit
def _pick(tile, sel):
    """Row `sel` of a [TB, BC] tile as a [BC] vector."""
    return tl.sum(tl.where(sel, tile, 0.0), axis=0)


@triton.jit
def _exp_pair(x, y):
    """(e^{x - m}, e^{y - m}, m) with m = max(x, y): one of the two factors is exactly 1, so one
    exponential per pair instead of two (ties give 1, 1 as before)."""
    d = tl.exp(-tl.abs(x - y))
    x_big = x >= y
    return tl.where(x_big, 1.0, d), tl.where(x_big, d, 1.0), tl.maximum(x, y)


@triton.jit
def _wkv4_fwd_kernel(
    w, u, k, v, aa0, bb0, pp0, y, aaT, bbT, ppT, ckpt, seg_state, T, C, B, SEG,
    BC: tl.constexpr, TB: tl.constexpr, HAS_STATE: tl.constexpr, SAVE: tl.constexpr, PHASE: tl.constexpr,
):  # fmt: skip
    """PHASE 0: the whole sequence from the initial state. With time split into segments of SEG
    tiles (program axis 2): PHASE 1 runs each segment from the empty state and stores its end
    state in seg_state [3, B, NS, C]; PHASE 2 runs each segment from the start state that
    _wkv4_seg_combine_kernel wrote there, storing y, the checkpoints and (last segment) the
    final state."""
    i_c = tl.program_id(0)
    i_b = tl.program_id(1)
    i_s = tl.program_id(2)
    NS = tl.num_programs(2)
    c = i_c * BC + tl.arange(0, BC)
    mc = c < C
    tt = tl.arange(0, TB)
    w_ = tl.load(w + c, mask=mc, other=0.0)
    u_ = tl.load(u + c, mask=mc, other=0.0)
    sc = i_b.to(tl.int64) * C + c
    seg_plane = (B * NS).to(tl.int64) * C  # seg_state is [3, B, NS, C]
    seg_offs = (i_b * NS + i_s).to(tl.int64) * C + c
    if PHASE == 2:
        aa = tl.load(seg_state + seg_offs, mask=mc, other=0.0)
        bb = tl.load(seg_state + seg_plane + seg_offs, mask=mc, other=0.0)
        pp = tl.load(seg_state + 2 * seg_plane + seg_offs, mask=mc, other=-1e38)
    elif HAS_STATE and PHASE == 0:
        aa = tl.load(aa0 + sc, mask=mc, other=0.0)
        bb = tl.load(bb0 + sc, mask=mc, other=0.0)
        pp = tl.load(pp0 + sc, mask=mc, other=-1e38)
    else:
        aa = tl.zeros([BC], dtype=tl.float32)
        bb = tl.zeros([BC], dtype=tl.float32)
        pp = tl.full([BC], -1e38, dtype=tl.float32)
    NB = tl.cdiv(T, TB)
    n0 = i_s * SEG
    n1 = tl.minimum(n0 + SEG, NB)
    plane = (B * NB).to(tl.int64) * C  # ckpt is [3, B, NB, C]
    offs = (i_b * T + n0 * TB + tt).to(tl.int64)[:, None] * C + c[None, :]
    m = (n0 * TB + tt < T)[:, None] & mc[None, :]
    kt = tl.load(k + offs, mask=m, other=0.0).to(tl.float32)
    vt = tl.load(v + offs, mask=m, other=0.0).to(tl.float32)
    for n in range(n0, n1):
        offs_n = (i_b * T + (n + 1) * TB + tt).to(tl.int64)[:, None] * C + c[None, :]
        mn = ((n + 1) * TB + tt < T)[:, None] & mc[None, :]
        kn = tl.load(k + offs_n, mask=mn, other=0.0).to(tl.float32)
        vn = tl.load(v + offs_n, mask=mn, other=0.0).to(tl.float32)
        if SAVE and PHASE != 1:
            ck = (i_b * NB + n).to(tl.int64) * C + c
            tl.store(ckpt + ck, aa, mask=mc)
            tl.store(ckpt + plane + ck, bb, mask=mc)
            tl.store(ckpt + 2 * plane + ck, pp, mask=mc)
        yt = tl.zeros([TB, BC], dtype=tl.float32)
        for i in tl.static_range(TB):
            sel = (tt == i)[:, None]
            ki = _pick(kt, sel)
            vi = _pick(vt, sel)
            if PHASE != 1:
                ww = u_ + ki
                e1, e2, p = _exp_pair(pp, ww)
                yt = tl.where(sel, ((e1 * aa + e2 * vi) / (e1 * bb + e2))[None, :], yt)
            ww = w_ + pp
            e1, e2, p = _exp_pair(ww, ki)
            live = n * TB + i < T
            aa = tl.where(live, e1 * aa + e2 * vi, aa)
            bb = tl.where(live, e1 * bb + e2, bb)
            pp = tl.where(live, p, pp)
        if PHASE != 1:
            tl.store(y + offs, yt.to(y.dtype.element_ty), mask=m)
        offs = offs_n
        m = mn
        kt = kn
        vt = vn
    if PHASE == 1:
        tl.store(seg_state + seg_offs, aa, mask=mc)
        tl.store(seg_state + seg_plane + seg_offs, bb, mask=mc)
        tl.store(seg_state + 2 * seg_plane + seg_offs, pp, mask=mc)
    else:
        last = mc & (tl.full([BC], i_s, tl.int32) == NS - 1)
        tl.store(aaT + sc, aa, mask=last)
        tl.store(bbT + sc, bb, mask=last)
        tl.store(ppT + sc, pp, mask=last)


@triton.jit
def _wkv4_seg_combine_kernel(
    w, aa0, bb0, pp0, seg_state, T, C, B, NS, SEG_LEN, BC: tl.constexpr, HAS_STATE: tl.constexpr
):  # fmt: skip
    """Middle pass of the time-split forward: walks the NS segments in order, replacing each
    segment's local end state in seg_state by its true start state. The true sums are linear,
    A_end = e^{L w} A_start + A_local (L steps in the segment), which in the running-max form is
    one _exp_pair per segment."""
    i_c = tl.program_id(0)
    i_b = tl.program_id(1)
    c = i_c * BC + tl.arange(0, BC)
    mc = c < C
    w_ = tl.load(w + c, mask=mc, other=0.0)
    sc = i_b.to(tl.int64) * C + c
    if HAS_STATE:
        aa = tl.load(aa0 + sc, mask=mc, other=0.0)
        bb = tl.load(bb0 + sc, mask=mc, other=0.0)
        pp = tl.load(pp0 + sc, mask=mc, other=-1e38)
    else:
        aa = tl.zeros([BC], dtype=tl.float32)
        bb = tl.zeros([BC], dtype=tl.float32)
        pp = tl.full([BC], -1e38, dtype=tl.float32)
    seg_plane = (B * NS).to(tl.int64) * C
    for s in range(NS):
        o = (i_b * NS + s).to(tl.int64) * C + c
        a_loc = tl.load(seg_state + o, mask=mc, other=0.0)
        b_loc = tl.load(seg_state + seg_plane + o, mask=mc, other=0.0)
        p_loc = tl.load(seg_state + 2 * seg_plane + o, mask=mc, other=-1e38)
        tl.store(seg_state + o, aa, mask=mc)
        tl.store(seg_state + seg_plane + o, bb, mask=mc)
        tl.store(seg_state + 2 * seg_plane + o, pp, mask=mc)
        steps = tl.minimum(SEG_LEN, T - s * SEG_LEN)
        e1, e2, pp = _exp_pair(pp + steps * w_, p_loc)
        aa = e1 * aa + e2 * a_loc
        bb = e1 * bb + e2 * b_loc


@triton.jit
def _wkv4_bwd_kernel(
    w, u, k, v, dy, ckpt, daaT, dbbT, dppT, dk, dv, dw, du, daa0, dbb0, dpp0, seg, T, C, B, SEG,
    BC: tl.constexpr, TB: tl.constexpr, HAS_DST: tl.constexpr, WANT_DS0: tl.constexpr, PHASE: tl.constexpr,
):  # fmt: skip
    """PHASE 0: the whole reverse recurrence. With time split into segments of SEG tiles
    (program axis 2), seg is [7, B, NS, C]: PHASE 1 runs each segment from a zero adjoint and
    stores the adjoint it reaches (planes 0-2) and the segment's linear map (planes 3-6, module
    docstring); _wkv4_bwd_seg_combine_kernel turns planes 0-2 into each segment's true end
    adjoint; PHASE 2 runs each segment from it, storing dk, dv and the segment's parts of dw, du
    (dw, du are [NS * B, C])."""
    i_c = tl.program_id(0)
    i_b = tl.program_id(1)
    i_s = tl.program_id(2)
    NS = tl.num_programs(2)
    c = i_c * BC + tl.arange(0, BC)
    mc = c < C
    tt = tl.arange(0, TB)
    w_ = tl.load(w + c, mask=mc, other=0.0)
    u_ = tl.load(u + c, mask=mc, other=0.0)
    sc = i_b.to(tl.int64) * C + c
    seg_plane = (B * NS).to(tl.int64) * C
    seg_offs = (i_b * NS + i_s).to(tl.int64) * C + c
    if PHASE == 2:
        ga = tl.load(seg + seg_offs, mask=mc, other=0.0)
        gb = tl.load(seg + seg_plane + seg_offs, mask=mc, other=0.0)
        gp = tl.load(seg + 2 * seg_plane + seg_offs, mask=mc, other=0.0)
    elif HAS_DST and PHASE == 0:
        ga = tl.load(daaT + sc, mask=mc, other=0.0)
        gb = tl.load(dbbT + sc, mask=mc, other=0.0)
        gp = tl.load(dppT + sc, mask=mc, other=0.0)
    else:
        ga = tl.zeros([BC], dtype=tl.float32)
        gb = tl.zeros([BC], dtype=tl.float32)
        gp = tl.zeros([BC], dtype=tl.float32)
    gw = tl.zeros([BC], dtype=tl.float32)
    gu = tl.zeros([BC], dtype=tl.float32)
    # the segment's map from end to start adjoint: ga, gb scale by F; gp = Pa ga + Pb gb + Wn gp
    F = tl.full([BC], 1.0, dtype=tl.float32)
    Pa = tl.zeros([BC], dtype=tl.float32)
    Pb = tl.zeros([BC], dtype=tl.float32)
    Wn = tl.full([BC], 1.0, dtype=tl.float32)
    NB = tl.cdiv(T, TB)
    n0 = i_s * SEG
    n1 = tl.minimum(n0 + SEG, NB)
    plane = (B * NB).to(tl.int64) * C  # ckpt is [3, B, NB, C]
    t_last = (n1 - 1) * TB + tt
    offs = (i_b * T + t_last).to(tl.int64)[:, None] * C + c[None, :]
    m = (t_last < T)[:, None] & mc[None, :]
    kt = tl.load(k + offs, mask=m, other=0.0).to(tl.float32)
    vt = tl.load(v + offs, mask=m, other=0.0).to(tl.float32)
    gyt = tl.load(dy + offs, mask=m, other=0.0).to(tl.float32)
    for j in range(n0, n1):
        n = n1 - 1 - (j - n0)
        t_prev = (n - 1) * TB + tt
        offs_n = (i_b * T + t_prev).to(tl.int64)[:, None] * C + c[None, :]
        mn = (t_prev >= 0)[:, None] & mc[None, :]
        kn = tl.load(k + offs_n, mask=mn, other=0.0).to(tl.float32)
        vn = tl.load(v + offs_n, mask=mn, other=0.0).to(tl.float32)
        gyn = tl.load(dy + offs_n, mask=mn, other=0.0).to(tl.float32)
        ck = (i_b * NB + n).to(tl.int64) * C + c
        aa = tl.load(ckpt + ck, mask=mc, other=0.0)
        bb = tl.load(ckpt + plane + ck, mask=mc, other=0.0)
        pp = tl.load(ckpt + 2 * plane + ck, mask=mc, other=-1e38)
        # replay the tile, keeping the state before each step
        a_t = tl.zeros([TB, BC], dtype=tl.float32)
        b_t = tl.zeros([TB, BC], dtype=tl.float32)
        p_t = tl.zeros([TB, BC], dtype=tl.float32)
        for i in tl.static_range(TB):
            sel = (tt == i)[:, None]
            a_t = tl.where(sel, aa[None, :], a_t)
            b_t = tl.where(sel, bb[None, :], b_t)
            p_t = tl.where(sel, pp[None, :], p_t)
            ki = _pick(kt, sel)
            vi = _pick(vt, sel)
            x = w_ + pp
            f, e, p = _exp_pair(x, ki)
            live = n * TB + i < T
            aa = tl.where(live, f * aa + e * vi, aa)
            bb = tl.where(live, f * bb + e, bb)
            pp = tl.where(live, p, pp)
        dkt = tl.zeros([TB, BC], dtype=tl.float32)
        dvt = tl.zeros([TB, BC], dtype=tl.float32)
        for jj in tl.static_range(TB):
            i = TB - 1 - jj
            sel = (tt == i)[:, None]
            ki = _pick(kt, sel)
            vi = _pick(vt, sel)
            gyi = _pick(gyt, sel)
            a0 = _pick(a_t, sel)
            b0 = _pick(b_t, sel)
            p0 = _pick(p_t, sel)
            # state update (module docstring)
            x = w_ + p0
            f, e, _ = _exp_pair(x, ki)
            g_p1 = gp - ga * (f * a0 + e * vi) - gb * (f * b0 + e)
            x_won = x >= ki
            gx = (ga * a0 + gb * b0) * f + tl.where(x_won, g_p1, 0.0)
            gk = (ga * vi + gb) * e + tl.where(x_won, 0.0, g_p1)
            gv = ga * e
            # output y_t
            wu = u_ + ki
            e1, e2, p = _exp_pair(p0, wu)
            den = e1 * b0 + e2
            g_num = gyi / den
            g_den = -g_num * (e1 * a0 + e2 * vi) / den
            g_wu = e2 * (g_num * vi + g_den)
            live = n * TB + i < T
            if PHASE == 1:
                chi = tl.where(x_won, 1.0, 0.0)
                alpha = a0 * f - chi * (f * a0 + e * vi)
                beta = b0 * f - chi * (f * b0 + e)
                Pa = tl.where(live, alpha * F + chi * Pa, Pa)
                Pb = tl.where(live, beta * F + chi * Pb, Pb)
                Wn = tl.where(live, chi * Wn, Wn)
                F = tl.where(live, f * F, F)
            ga = tl.where(live, f * ga + e1 * g_num, ga)
            gb = tl.where(live, f * gb + e1 * g_den, gb)
            gp = tl.where(live, gx + e1 * (g_num * a0 + g_den * b0), gp)
            gw += tl.where(live, gx, 0.0)
            gu += tl.where(live, g_wu, 0.0)
            dkt = tl.where(sel, (gk + g_wu)[None, :], dkt)
            dvt = tl.where(sel, (gv + e2 * g_num)[None, :], dvt)
        if PHASE != 1:
            tl.store(dk + offs, dkt.to(dk.dtype.element_ty), mask=m)
            tl.store(dv + offs, dvt.to(dv.dtype.element_ty), mask=m)
        offs = offs_n
        m = mn
        kt = kn
        vt = vn
        gyt = gyn
    if PHASE == 1:
        tl.store(seg + seg_offs, ga, mask=mc)
        tl.store(seg + seg_plane + seg_offs, gb, mask=mc)
        tl.store(seg + 2 * seg_plane + seg_offs, gp, mask=mc)
        tl.store(seg + 3 * seg_plane + seg_offs, F, mask=mc)
        tl.store(seg + 4 * seg_plane + seg_offs, Pa, mask=mc)
        tl.store(seg + 5 * seg_plane + seg_offs, Pb, mask=mc)
        tl.store(seg + 6 * seg_plane + seg_offs, Wn, mask=mc)
    else:
        part = (i_s * B + i_b).to(tl.int64) * C + c
        tl.store(dw + part, gw, mask=mc)
        tl.store(du + part, gu, mask=mc)
    if WANT_DS0 and PHASE == 0:
        tl.store(daa0 + sc, ga, mask=mc)
        tl.store(dbb0 + sc, gb, mask=mc)
        tl.store(dpp0 + sc, gp, mask=mc)


@triton.jit
def _wkv4_bwd_seg_combine_kernel(
    daaT, dbbT, dppT, daa0, dbb0, dpp0, seg, C, B, NS,
    BC: tl.constexpr, HAS_DST: tl.constexpr, WANT_DS0: tl.constexpr,
):  # fmt: skip
    """Middle pass of the time-split backward: walks the segments from the last, replacing each
    segment's local start adjoint (planes 0-2 of seg) by its true end adjoint and applying the
    segment's map; what is left at the start is the initial state's gradient."""
    i_c = tl.program_id(0)
    i_b = tl.program_id(1)
    c = i_c * BC + tl.arange(0, BC)
    mc = c < C
    sc = i_b.to(tl.int64) * C + c
    if HAS_DST:
        ga = tl.load(daaT + sc, mask=mc, other=0.0)
        gb = tl.load(dbbT + sc, mask=mc, other=0.0)
        gp = tl.load(dppT + sc, mask=mc, other=0.0)
    else:
        ga = tl.zeros([BC], dtype=tl.float32)
        gb = tl.zeros([BC], dtype=tl.float32)
        gp = tl.zeros([BC], dtype=tl.float32)
    seg_plane = (B * NS).to(tl.int64) * C
    for j in range(NS):
        o = (i_b * NS + NS - 1 - j).to(tl.int64) * C + c
        ca = tl.load(seg + o, mask=mc, other=0.0)
        cb = tl.load(seg + seg_plane + o, mask=mc, other=0.0)
        cp = tl.load(seg + 2 * seg_plane + o, mask=mc, other=0.0)
        F = tl.load(seg + 3 * seg_plane + o, mask=mc, other=0.0)
        Pa = tl.load(seg + 4 * seg_plane + o, mask=mc, other=0.0)
        Pb = tl.load(seg + 5 * seg_plane + o, mask=mc, other=0.0)
        Wn = tl.load(seg + 6 * seg_plane + o, mask=mc, other=0.0)
        tl.store(seg + o, ga, mask=mc)
        tl.store(seg + seg_plane + o, gb, mask=mc)
        tl.store(seg + 2 * seg_plane + o, gp, mask=mc)
        gp = Pa * ga + Pb * gb + Wn * gp + cp
        ga = F * ga + ca
        gb = F * gb + cb
    if WANT_DS0:
        tl.store(daa0 + sc, ga, mask=mc)
        tl.store(dbb0 + sc, gb, mask=mc)
        tl.store(dpp0 + sc, gp, mask=mc)


def _block_c(B: int, C: int, device: torch.device) -> int:
    """Channels per program. A program is one warp and each thread holds the whole time tile of
    its channel (picking row i of a tile is then a register move); halve BC while there are
    fewer programs than SMs."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    bc = 32
    while bc > 16 and B * triton.cdiv(C, bc) < sms:
        bc //= 2
    return bc


# Read once at import: inside a compiled block, Dynamo cannot inspect the kernel object and
# would break the graph at the check.
_INTERPRETED = is_interpreted(_wkv4_fwd_kernel)

_FWD_SCHEMA = (
    "(Tensor w, Tensor u, Tensor k, Tensor v, Tensor? aa, Tensor? bb, Tensor? pp, int block_c, bool save, "
    "int time_split) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "(Tensor w, Tensor u, Tensor k, Tensor v, Tensor dy, Tensor ckpt, Tensor? daa, Tensor? dbb, "
    "Tensor? dpp, int block_c, bool want_ds0, int time_split) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
)


@torch.library.custom_op("skein::wkv4_fwd", mutates_args=(), schema=_FWD_SCHEMA)
def wkv4_fwd(w, u, k, v, aa, bb, pp, block_c, save, time_split):
    """y [B, T, C], the final (aa, bb, pp) (fp32 [B, C] each) and, when `save`, the state at every
    time-tile start [3, B, NB, C] (fp32; else an empty tensor). time_split > 1 runs the three-pass
    forward over that many time segments."""
    B, T, C = k.shape
    NB = triton.cdiv(T, TIME_TILE)
    y = torch.empty_like(k)
    out = [k.new_empty(B, C, dtype=torch.float32) for _ in range(3)]
    ckpt = k.new_empty((3, B, NB, C) if save else (0,), dtype=torch.float32)
    seg = triton.cdiv(NB, max(1, time_split))
    ns = triton.cdiv(NB, seg)
    grid = (triton.cdiv(C, block_c), B, ns)
    opts = {"BC": block_c, "TB": TIME_TILE, "HAS_STATE": aa is not None, "num_warps": max(1, block_c // 32)}
    args = (w, u, k, v, aa, bb, pp, y, *out, ckpt if save else None)
    if ns == 1:
        _wkv4_fwd_kernel[grid](*args, None, T, C, B, NB, SAVE=save, PHASE=0, **opts)
        return (y, *out, ckpt)
    seg_state = k.new_empty(3, B, ns, C, dtype=torch.float32)
    _wkv4_fwd_kernel[grid](*args, seg_state, T, C, B, seg, SAVE=False, PHASE=1, **opts)
    _wkv4_seg_combine_kernel[grid[:2]](
        w, aa, bb, pp, seg_state, T, C, B, ns, seg * TIME_TILE, BC=block_c, HAS_STATE=aa is not None,
        num_warps=opts["num_warps"],
    )  # fmt: skip
    _wkv4_fwd_kernel[grid](*args, seg_state, T, C, B, seg, SAVE=save, PHASE=2, **opts)
    return (y, *out, ckpt)


@wkv4_fwd.register_fake
def _(w, u, k, v, aa, bb, pp, block_c, save, time_split):
    B, T, C = k.shape
    NB = (T + TIME_TILE - 1) // TIME_TILE
    ckpt = k.new_empty((3, B, NB, C) if save else (0,), dtype=torch.float32)
    return (torch.empty_like(k), *(k.new_empty(B, C, dtype=torch.float32) for _ in range(3)), ckpt)


@torch.library.custom_op("skein::wkv4_bwd", mutates_args=(), schema=_BWD_SCHEMA)
def wkv4_bwd(w, u, k, v, dy, ckpt, daa, dbb, dpp, block_c, want_ds0, time_split):
    """Gradients of w, u ([C], fp32), k, v (their dtypes) and of the initial (aa, bb, pp) (fp32
    [B, C] each, or empty tensors unless `want_ds0`). daa, dbb, dpp are all given or all None.
    time_split > 1 runs the three-pass backward over that many time segments."""
    B, T, C = k.shape
    NB = triton.cdiv(T, TIME_TILE)
    seg_tiles = triton.cdiv(NB, max(1, time_split))
    ns = triton.cdiv(NB, seg_tiles)
    ds0 = [k.new_empty((B, C) if want_ds0 else (0,), dtype=torch.float32) for _ in range(3)]
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    dw = k.new_empty(ns * B, C, dtype=torch.float32)
    du = torch.empty_like(dw)
    grid = (triton.cdiv(C, block_c), B, ns)
    opts = {"BC": block_c, "TB": TIME_TILE, "HAS_DST": daa is not None, "num_warps": max(1, block_c // 32)}
    args = (w, u, k, v, dy, ckpt, daa, dbb, dpp, dk, dv, dw, du, *(d if want_ds0 else None for d in ds0))
    if ns == 1:
        _wkv4_bwd_kernel[grid](*args, None, T, C, B, NB, WANT_DS0=want_ds0, PHASE=0, **opts)
        return dw.sum(0), du.sum(0), dk, dv, *ds0
    seg = k.new_empty(7, B, ns, C, dtype=torch.float32)
    _wkv4_bwd_kernel[grid](*args, seg, T, C, B, seg_tiles, WANT_DS0=False, PHASE=1, **opts)
    _wkv4_bwd_seg_combine_kernel[grid[:2]](
        daa, dbb, dpp, *(d if want_ds0 else None for d in ds0), seg, C, B, ns,
        BC=block_c, HAS_DST=daa is not None, WANT_DS0=want_ds0, num_warps=opts["num_warps"],
    )  # fmt: skip
    _wkv4_bwd_kernel[grid](*args, seg, T, C, B, seg_tiles, WANT_DS0=False, PHASE=2, **opts)
    return dw.sum(0), du.sum(0), dk, dv, *ds0


@wkv4_bwd.register_fake
def _(w, u, k, v, dy, ckpt, daa, dbb, dpp, block_c, want_ds0, time_split):
    B, T, C = k.shape
    ds0 = [k.new_empty((B, C) if want_ds0 else (0,), dtype=torch.float32) for _ in range(3)]
    return (torch.empty_like(w), torch.empty_like(u), torch.empty_like(k), torch.empty_like(v), *ds0)


def _setup_context(ctx, inputs, output) -> None:
    w, u, k, v, aa, _, _, block_c, _, time_split = inputs
    ctx.save_for_backward(w, u, k, v, output[4])
    ctx.has_state, ctx.block_c, ctx.time_split = aa is not None, block_c, time_split


def _backward(ctx, dy, daa, dbb, dpp, _dckpt):
    w, u, k, v, ckpt = ctx.saved_tensors
    B, _, C = k.shape
    dy = torch.zeros_like(k) if dy is None else dy.contiguous()
    if all(g is None for g in (daa, dbb, dpp)):
        dst = (None, None, None)
    else:
        dst = tuple(
            k.new_zeros(B, C, dtype=torch.float32) if g is None else g.float().contiguous()
            for g in (daa, dbb, dpp)
        )
    want_ds0 = ctx.has_state and any(ctx.needs_input_grad[4:7])
    dw, du, dk, dv, *ds0 = torch.ops.skein.wkv4_bwd(
        w, u, k, v, dy, ckpt, *dst, ctx.block_c, want_ds0, ctx.time_split
    )
    return (dw, du, dk, dv, *(d if want_ds0 else None for d in ds0), None, None, None)


wkv4_fwd.register_autograd(_backward, setup_context=_setup_context)


def fused_wkv4(
    w: Tensor,
    u: Tensor,
    k: Tensor,
    v: Tensor,
    state: Wkv4State | None = None,
    *,
    block_c: int | None = None,
    time_split: int = TIME_SPLIT,
) -> tuple[Tensor, Wkv4State]:
    """RWKV-4 WKV with the fused recurrent Triton kernels; same math and conventions as wkv4_naive.

    Args:
        w: [C] log decay per step (-exp(time_decay)); u: [C] bonus of the current token (any float
            dtype, computed in fp32).
        k, v: [B, T, C], each bf16, fp16 or fp32.
        state: (aa, bb, pp), each [B, C] (cast to fp32); None for the empty state.
        block_c: channels per program (power of two >= 16); None picks one.
        time_split: time segments of the forward and the backward: 1 walks the whole sequence
            per program; n > 1 runs each pass in three (each segment from the empty state or a
            zero adjoint, the segments combined in order, each segment again from its true
            start), n times the programs.
    Returns:
        y: [B, T, C] in k's dtype, and the final state (aa, bb, pp) in fp32; differentiable in
        w, u, k, v and the initial state.
    Raises:
        ValueError: unsupported device, dtype or shape.
    """
    op = "fused_wkv4"
    aa, bb, pp = state if state is not None else (None, None, None)
    check_device(op, _INTERPRETED, w=w, u=u, k=k, v=v, aa=aa, bb=bb, pp=pp)
    check_dtypes(op, k=k, v=v)
    if k.dim() != 3:
        raise ValueError(f"{op}: k must be [B, T, C], got {tuple(k.shape)}")
    B, T, C = k.shape
    check_shape(op, "v", v, (B, T, C))
    check_shape(op, "w", w, (C,))
    check_shape(op, "u", u, (C,))
    check_length(op, T)
    if block_c is not None and (block_c < 16 or block_c & (block_c - 1)):
        raise ValueError(f"{op}: block_c = {block_c} must be a power of two >= 16")
    if state is not None:
        for name, s in (("aa", aa), ("bb", bb), ("pp", pp)):
            check_shape(op, name, s, (B, C))
        aa, bb, pp = (s.float().contiguous() for s in (aa, bb, pp))
    w, u = w.float().contiguous(), u.float().contiguous()
    k, v = k.contiguous(), v.contiguous()
    save = torch.is_grad_enabled() and any(
        x is not None and x.requires_grad for x in (w, u, k, v, aa, bb, pp)
    )
    if time_split < 1:
        raise ValueError(f"{op}: time_split = {time_split} must be at least 1")
    y, aa, bb, pp, _ = wkv4_fwd(w, u, k, v, aa, bb, pp, block_c or _block_c(B, C, k.device), save, time_split)
    return y, (aa, bb, pp)


__all__ = ["fused_wkv4"]
