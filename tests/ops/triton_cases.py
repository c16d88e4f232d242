"""Checks of the Triton kernels against the float64 token loops, run by Triton's interpreter.

Triton decides at decoration time whether a kernel is compiled or interpreted, so these checks run
in a process of their own with TRITON_INTERPRET=1 (tests/ops/test_triton_kernels.py starts it):
    TRITON_INTERPRET=1 python -m tests.ops.triton_cases [CASE ...]
prints one JSON line per case: {"case", "ok", "error"}.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable

import torch

from skein.rwkv.ops.delta_product.naive import delta_product_naive
from skein.rwkv.ops.rwkv7.naive import rwkv7_naive
from skein.rwkv.ops.wkv4.naive import wkv4_naive
from tests.ops.kernel_checks import (
    BF16_TOL,
    FP32_TOL,
    cast,
    check_segments,
    check_vs_reference,
    delta_product_inputs,
    delta_product_pair,
    rwkv7_inputs,
    rwkv7_pair,
    split_state,
    wkv4_inputs,
    wkv4_leaves,
    wkv4_pair,
)
from tests.utils import assert_close


def rwkv7_fp32(T: int, decay: str = "model") -> Callable[[], None]:
    def case() -> None:
        check_vs_reference(*rwkv7_pair(), rwkv7_inputs(2, T, 2, 16, 16, decay, seed=T), FP32_TOL)

    return case


def rwkv7_vblocks() -> None:
    """V split over two forward programs, K != V, no initial state."""
    inputs = rwkv7_inputs(1, 21, 2, 16, 32, seed=1)
    inputs["state"] = None
    check_vs_reference(*rwkv7_pair(block_v=16), inputs, FP32_TOL)


def rwkv7_bf16() -> None:
    """bf16 inputs with the log decay kept in fp32, as models often do."""
    inputs = cast(rwkv7_inputs(1, 33, 2, 16, 16, seed=2), torch.bfloat16, keep=("state", "w"))
    check_vs_reference(*rwkv7_pair(), inputs, BF16_TOL)


def rwkv7_segments() -> None:
    kernel, _ = rwkv7_pair()
    inputs = rwkv7_inputs(2, 45, 1, 16, 16, seed=3)
    check_segments(kernel, inputs, dict.fromkeys("rwkvab", 1), "state")


def rwkv7_dispatch() -> None:
    """backend='triton' runs chunk_rwkv7; no_grad skips the saved states and gives the same output."""
    from skein.rwkv.ops.rwkv7 import rwkv7
    from skein.rwkv.ops.rwkv7.chunk import chunk_rwkv7

    inputs = rwkv7_inputs(1, 20, 1, 16, 16, seed=4)
    o1, s1 = rwkv7(**inputs, backend="triton")
    with torch.no_grad():
        o2, s2 = chunk_rwkv7(**inputs)
    assert torch.equal(o1, o2) and torch.equal(s1, s2)
    assert_close(o1, rwkv7_naive(**inputs)[0], FP32_TOL, "dispatched output")


RWKV7_VARIANTS = {
    "c32_vsplit": {"chunk": 32, "bwd_block_v": 16},
    "c64_atomic": {"chunk": 64, "bwd_block_v": 16, "bwd_reduce": "atomic"},
    "c16_vsplit_atomic": {"chunk": 16, "block_v": 16, "bwd_block_v": 16, "bwd_reduce": "atomic"},
    "c16_two_pass": {"chunk": 16, "bwd_two_pass": True},
    "c32_two_pass_vsplit": {"chunk": 32, "bwd_block_v": 16, "bwd_two_pass": True},
}


def rwkv7_variant(name: str, T: int) -> Callable[[], None]:
    """A launch variant (chunk size, V split of the backward and its reduction) against float64,
    K != V so the V split covers two backward programs."""

    def case() -> None:
        inputs = rwkv7_inputs(1, T, 2, 16, 32, seed=T + 40)
        check_vs_reference(*rwkv7_pair(**RWKV7_VARIANTS[name]), inputs, FP32_TOL)

    return case


def rwkv7_variant_bf16() -> None:
    inputs = cast(rwkv7_inputs(1, 37, 2, 16, 32, seed=41), torch.bfloat16, keep=("state", "w"))
    check_vs_reference(*rwkv7_pair(**RWKV7_VARIANTS["c32_vsplit"]), inputs, BF16_TOL)


BF16_DOTS_TOL = 3e-2
"""Rwkv7Launch(dots="bf16") rounds every tile product's operands to bf16, the state's too: on
rwkv7_bf16_dots' inputs its worst error is 2.1e-2 (da) where the TF32 products give 3.8e-3, so
it is checked against this looser bound and stays opt-in."""


def rwkv7_bf16_dots() -> None:
    """Tile products on bf16 operands (Rwkv7Launch(dots="bf16")), bf16 inputs, K != V, T across
    three chunks, initial state: every output and gradient within BF16_DOTS_TOL; the same inputs
    through the default TF32 products differ from it (the launch really changes them)."""
    from skein.rwkv.ops.rwkv7.chunk import Rwkv7Launch, chunk_rwkv7

    inputs = cast(rwkv7_inputs(2, 37, 2, 16, 32, seed=43), torch.bfloat16, keep=("state",))
    check_vs_reference(*rwkv7_pair(dots="bf16"), inputs, BF16_DOTS_TOL)
    o_bf16, _ = chunk_rwkv7(**inputs, launch=Rwkv7Launch(dots="bf16"))
    o_tf32, _ = chunk_rwkv7(**inputs)
    assert not torch.equal(o_bf16, o_tf32)


def _compile_matches_eager(fn: Callable, args: list[torch.Tensor]) -> None:
    """torch.compile(fullgraph=True) of fn traces the custom ops without a graph break and gives
    eager's loss and gradients."""
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    loss = fn(*args)
    grads = torch.autograd.grad(loss, args)
    loss_c = compiled(*args)
    grads_c = torch.autograd.grad(loss_c, args)
    assert_close(loss_c, loss, 1e-6, "compiled loss")
    for i, (g, gc) in enumerate(zip(grads, grads_c)):
        assert g.abs().sum() > 0, f"gradient {i} is zero"
        assert_close(gc, g, 1e-6, f"compiled gradient {i}")


def _opcheck(op: object, args: tuple) -> None:
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def rwkv7_custom_op() -> None:
    """opcheck of both ops (schema, fake tensors, autograd registration, AOT dispatch) and a
    fullgraph compile of a loss through chunk_rwkv7 with a V-split backward."""
    from skein.rwkv.ops.rwkv7.chunk import Rwkv7Launch, chunk_rwkv7

    x = rwkv7_inputs(1, 5, 1, 16, 32, seed=42)
    args = [x[n].requires_grad_() for n in (*"rwkvab", "state")]
    _opcheck(
        torch.ops.skein.rwkv7_fwd.default,
        (*args, 0.8, 16, 16, 4, True, False, 16, False, True, 4, 0, 0),
    )
    _opcheck(
        torch.ops.skein.rwkv7_fwd.default,
        (*args, 0.8, 16, 16, 4, True, False, 16, False, True, 4, 0, 0, "bf16"),
    )
    states = torch.randn(1, 1, 16, 32)
    do, dsT, sT = torch.randn_like(x["v"]), torch.randn_like(x["state"]), torch.randn_like(x["state"])
    no_u = torch.empty(0)
    _opcheck(
        torch.ops.skein.rwkv7_bwd.default,
        (
            *(t.detach() for t in args[:6]),
            do,
            dsT,
            states,
            sT,
            no_u,
            0.8,
            16,
            16,
            False,
            True,
            4,
            0,
            0,
            True,
        ),
    )
    launch = Rwkv7Launch(bwd_block_v=16, bwd_two_pass=True)

    def loss(r, w, k, v, a, b, s):
        o, sT = chunk_rwkv7(r, w, k, v, a, b, s, 0.8, launch=launch)
        return (o * o).sum() + sT.sin().sum()

    _compile_matches_eager(loss, args)


def rwkv7_saves_u() -> None:
    """With save_u the forward also writes u_t = S_{t-1}^T a_t, which the CUDA backward reads:
    checked against a float64 token loop (T = 37 crosses chunk boundaries), with the saved
    chunk-start states."""
    import skein.rwkv.ops.rwkv7.chunk  # noqa: F401  (registers the op)

    x = rwkv7_inputs(2, 37, 2, 32, 32, seed=9)
    r, w, k, v, a, b, s0 = (x[n] for n in (*"rwkvab", "state"))
    o, sT, states, u = torch.ops.skein.rwkv7_fwd(
        r, w, k, v, a, b, s0, 0.8, 16, 0, 4, True, True, 32, False, False, 8, 0, 0
    )
    S = s0.double()
    us, starts = [], []
    for t in range(37):
        if t % 16 == 0:
            starts.append(S.flatten(0, 1))
        us.append(torch.einsum("bhk,bhkv->bhv", a[:, t].double(), S))
        S = (
            w[:, t].double().exp().unsqueeze(-1) * S
            + b[:, t].double().unsqueeze(-1) * us[-1].unsqueeze(-2)
            + k[:, t].double().unsqueeze(-1) * v[:, t].double().unsqueeze(-2)
        )
    assert u.shape == (2, 37, 2, 32) and u.dtype == torch.float32
    assert us[5].abs().mean() > 0.05
    assert_close(u, torch.stack(us, 1), FP32_TOL, "u")
    assert_close(states, torch.stack(starts, 1), FP32_TOL, "chunk-start states")
    assert_close(sT, S, FP32_TOL, "final state")


def wkv4_fp32(T: int, spread: float = 3.0) -> Callable[[], None]:
    def case() -> None:
        kernel, reference = wkv4_pair(block_c=16)
        inputs = wkv4_leaves(wkv4_inputs(2, T, 40, spread, seed=T))
        check_vs_reference(split_state(kernel), split_state(reference), inputs, FP32_TOL)

    return case


def wkv4_time_split(T: int, segments: int, state: bool = True) -> Callable[[], None]:
    """The three-pass forward and backward over `segments` time segments (the last one shorter)."""

    def case() -> None:
        kernel, reference = wkv4_pair(block_c=16, time_split=segments)
        inputs = wkv4_inputs(2, T, 40, spread=10.0, seed=T + segments)
        if state:
            check_vs_reference(split_state(kernel), split_state(reference), wkv4_leaves(inputs), FP32_TOL)
        else:
            inputs["state"] = None
            check_vs_reference(kernel, reference, inputs, FP32_TOL)

    return case


def wkv4_empty_state() -> None:
    kernel, reference = wkv4_pair(block_c=16)
    inputs = wkv4_inputs(1, 19, 24, seed=5)
    inputs["state"] = None
    check_vs_reference(kernel, reference, inputs, FP32_TOL)


def wkv4_bf16() -> None:
    kernel, reference = wkv4_pair(block_c=16)
    inputs = wkv4_leaves(wkv4_inputs(1, 33, 24, seed=6))
    inputs["k"], inputs["v"] = inputs["k"].bfloat16(), inputs["v"].bfloat16()
    check_vs_reference(split_state(kernel), split_state(reference), inputs, BF16_TOL)


def wkv4_segments() -> None:
    kernel, _ = wkv4_pair(block_c=16)
    inputs = wkv4_leaves(wkv4_inputs(2, 37, 24, seed=7))
    state = (inputs.pop("aa"), inputs.pop("bb"), inputs.pop("pp"))

    def fn(w, u, k, v, state):
        return kernel(w, u, k, v, state)

    check_segments(fn, {**inputs, "state": state}, {"k": 1, "v": 1}, "state")


def wkv4_dispatch() -> None:
    from skein.rwkv.ops.wkv4 import wkv4

    inputs = wkv4_inputs(1, 9, 24, seed=8)
    y, _ = wkv4(**inputs, backend="triton")
    assert_close(y, wkv4_naive(**inputs)[0], FP32_TOL, "dispatched output")


def wkv4_custom_op() -> None:
    """opcheck of both ops and a fullgraph compile of a loss through fused_wkv4 with a state."""
    from skein.rwkv.ops.wkv4.fused import fused_wkv4

    x = wkv4_leaves(wkv4_inputs(1, 11, 24, spread=5.0, seed=52))
    names = ("w", "u", "k", "v", "aa", "bb", "pp")
    args = [x[n].requires_grad_() for n in names]
    _opcheck(torch.ops.skein.wkv4_fwd.default, (*args, 16, True, 2))
    ckpt = torch.ops.skein.wkv4_fwd(*(t.detach() for t in args), 16, True, 2)[4]
    dy, dst = torch.randn_like(x["k"]), [torch.randn_like(x["aa"]) for _ in range(3)]
    _opcheck(torch.ops.skein.wkv4_bwd.default, (*(t.detach() for t in args[:4]), dy, ckpt, *dst, 16, True, 2))

    def loss(w, u, k, v, aa, bb, pp):
        y, (aa, bb, pp) = fused_wkv4(w, u, k, v, (aa, bb, pp), block_c=16, time_split=2)
        return (y * y).sum() + aa.sin().sum() + bb.cos().sum() + pp.sin().sum()

    _compile_matches_eager(loss, args)


def delta_product_fp32(T: int, nh: int, gate: bool) -> Callable[[], None]:
    def case() -> None:
        inputs = delta_product_inputs(2, T, nh, 2, 16, 16, gate, seed=T + nh)
        check_vs_reference(*delta_product_pair(), inputs, FP32_TOL)

    return case


DELTA_PRODUCT_VARIANTS = {
    "c32_vsplit": {"chunk": 32, "bwd_block_v": 16},
    "c64_atomic": {"chunk": 64, "bwd_block_v": 16, "bwd_reduce": "atomic"},
    "c16_two_pass": {"chunk": 16, "bwd_two_pass": True},
    "c32_two_pass_vsplit": {"chunk": 32, "bwd_block_v": 16, "bwd_two_pass": True},
}


def delta_product_variant(name: str, T: int, nh: int, gate: bool) -> Callable[[], None]:
    """A launch variant against float64, K != V so the V split covers two backward programs."""

    def case() -> None:
        inputs = delta_product_inputs(1, T, nh, 2, 16, 32, gate, seed=T + nh + 50)
        check_vs_reference(*delta_product_pair(**DELTA_PRODUCT_VARIANTS[name]), inputs, FP32_TOL)

    return case


def delta_product_custom_op() -> None:
    """opcheck of both ops and a fullgraph compile of a loss through chunk_delta_product."""
    from skein.rwkv.ops.delta_product.chunk import DeltaProductLaunch, chunk_delta_product

    x = delta_product_inputs(1, 5, 2, 1, 16, 32, gate=True, seed=51)
    names = ("q", "k", "v", "beta", "g", "state")
    args = [x[n].requires_grad_() for n in names]
    _opcheck(torch.ops.skein.delta_product_fwd.default, (*args, 0.3, 16, 16, 4, True, 16, False, True, 4))
    do, dsT = torch.randn(1, 5, 1, 32), torch.randn_like(x["state"])
    states = torch.randn(1, 1, 16, 32)
    _opcheck(
        torch.ops.skein.delta_product_bwd.default,
        (*(t.detach() for t in args[:5]), do, dsT, states, 0.3, 16, 16, True, True, 4, True),
    )
    launch = DeltaProductLaunch(bwd_block_v=16, bwd_two_pass=True)

    def loss(q, k, v, beta, g, s):
        o, sT = chunk_delta_product(q, k, v, beta, g, s, 0.3, launch=launch)
        return (o * o).sum() + sT.sin().sum()

    _compile_matches_eager(loss, args)


def delta_product_vblocks() -> None:
    inputs = delta_product_inputs(1, 11, 2, 1, 16, 32, gate=True, seed=9)
    inputs["state"] = None
    check_vs_reference(*delta_product_pair(block_v=16), inputs, FP32_TOL)


def delta_product_bf16() -> None:
    """bf16 q, k, v with beta and the gate kept in fp32."""
    inputs = cast(
        delta_product_inputs(1, 33, 2, 2, 16, 16, gate=True, seed=10), torch.bfloat16, ("state", "beta", "g")
    )
    check_vs_reference(*delta_product_pair(), inputs, BF16_TOL)


def delta_product_segments() -> None:
    kernel, _ = delta_product_pair()
    inputs = delta_product_inputs(2, 29, 2, 1, 16, 16, gate=True, seed=11)
    check_segments(kernel, inputs, dict.fromkeys(("q", "k", "v", "beta", "g"), 1), "state")


def delta_product_dispatch() -> None:
    from skein.rwkv.ops.delta_product import delta_product

    inputs = delta_product_inputs(1, 9, 2, 1, 16, 16, gate=True, seed=12)
    o, _ = delta_product(**inputs, backend="triton")
    assert_close(o, delta_product_naive(**inputs)[0], FP32_TOL, "dispatched output")


def delta_product_dispatch_v_pieces() -> None:
    """A head_v_dim the kernel does not take (48: not a power of two) runs as three 16-column
    pieces; outputs, state and every gradient against float64."""
    from skein.rwkv.ops.delta_product import delta_product

    def kernel(q, k, v, beta, g, state):
        return delta_product(q, k, v, beta, g, state, 0.3, backend="triton")

    _, reference = delta_product_pair()
    inputs = delta_product_inputs(1, 9, 2, 2, 16, 48, gate=True, seed=13)
    check_vs_reference(kernel, reference, inputs, FP32_TOL)


def _raises(fn: Callable, *args, match: str, **kw) -> None:
    try:
        fn(*args, **kw)
    except ValueError as e:
        assert match in str(e), f"message {str(e)!r} lacks {match!r}"
        return
    raise AssertionError(f"{fn.__name__} accepted arguments it should refuse ({match})")


def refusals() -> None:
    """Unsupported shapes and dtypes raise ValueError naming the problem."""
    from skein.rwkv.ops.delta_product.chunk import chunk_delta_product
    from skein.rwkv.ops.rwkv7.chunk import chunk_rwkv7
    from skein.rwkv.ops.wkv4.fused import fused_wkv4

    x = rwkv7_inputs(1, 4, 1, 24, 16)
    _raises(chunk_rwkv7, **x, match="K = 24")
    x = rwkv7_inputs(1, 4, 1, 256, 16)
    _raises(chunk_rwkv7, **x, match="K = 256")
    x = rwkv7_inputs(1, 4, 1, 16, 16)
    _raises(chunk_rwkv7, **{n: t.double() for n, t in x.items()}, match="float64")
    _raises(chunk_rwkv7, **{**x, "r": x["r"].to(torch.int32)}, match="r has dtype")
    _raises(chunk_rwkv7, **{**x, "state": x["state"][:, :, :8]}, match="state has shape")
    _raises(chunk_rwkv7, **{n: t if n == "state" else t[:, :0] for n, t in x.items()}, match="T = 0")
    _raises(chunk_rwkv7, **x, block_v=48, match="block_v")
    from skein.rwkv.ops.rwkv7.chunk import Rwkv7Launch

    _raises(chunk_rwkv7, **x, launch=Rwkv7Launch(chunk=24), match="chunk = 24")
    _raises(chunk_rwkv7, **x, launch=Rwkv7Launch(bwd_block_v=32), match="bwd_block_v = 32")
    _raises(chunk_rwkv7, **x, launch=Rwkv7Launch(bwd_reduce="mean"), match="bwd_reduce")
    y = wkv4_inputs(1, 4, 24)
    _raises(fused_wkv4, **{**y, "k": y["k"].double(), "v": y["v"].double()}, match="float64")
    _raises(fused_wkv4, **{**y, "u": y["u"][:5]}, match="u has shape")
    _raises(fused_wkv4, **y, time_split=0, match="time_split = 0")
    z = delta_product_inputs(1, 4, 17, 1, 16, 16, gate=True)
    _raises(chunk_delta_product, **z, match="n_h = 17")
    z = delta_product_inputs(1, 4, 1, 1, 16, 12, gate=False)
    _raises(chunk_delta_product, **z, match="V = 12")
    from skein.rwkv.ops.delta_product.chunk import DeltaProductLaunch

    z = delta_product_inputs(1, 4, 2, 1, 16, 16, gate=True)
    _raises(chunk_delta_product, **z, launch=DeltaProductLaunch(chunk=8), match="chunk = 8")


def realistic(op: str) -> Callable[[], None]:
    """Larger heads and several chunks (K = V = 64, T = 100) in fp32."""

    def case() -> None:
        if op == "rwkv7":
            check_vs_reference(*rwkv7_pair(), rwkv7_inputs(1, 100, 1, 64, 64, seed=20), FP32_TOL)
        elif op == "wkv4":
            kernel, reference = wkv4_pair(block_c=16)
            inputs = wkv4_leaves(wkv4_inputs(2, 100, 80, spread=10.0, seed=21))
            check_vs_reference(split_state(kernel), split_state(reference), inputs, FP32_TOL)
        else:
            inputs = delta_product_inputs(1, 60, 2, 1, 64, 64, gate=True, seed=22)
            check_vs_reference(*delta_product_pair(), inputs, FP32_TOL)

    return case


CASES: dict[str, Callable[[], None]] = {
    **{f"rwkv7_fp32_T{T}": rwkv7_fp32(T) for T in (1, 7, 33)},
    "rwkv7_decay_slow": rwkv7_fp32(33, "slow"),
    "rwkv7_decay_fast": rwkv7_fp32(33, "fast"),
    "rwkv7_vblocks": rwkv7_vblocks,
    "rwkv7_bf16": rwkv7_bf16,
    "rwkv7_segments": rwkv7_segments,
    "rwkv7_dispatch": rwkv7_dispatch,
    **{f"rwkv7_{name}_T{T}": rwkv7_variant(name, T) for name in RWKV7_VARIANTS for T in (37, 100)},
    "rwkv7_variant_bf16": rwkv7_variant_bf16,
    "rwkv7_bf16_dots": rwkv7_bf16_dots,
    "rwkv7_custom_op": rwkv7_custom_op,
    "rwkv7_saves_u": rwkv7_saves_u,
    **{f"wkv4_fp32_T{T}": wkv4_fp32(T) for T in (1, 7, 33)},
    "wkv4_large_k": wkv4_fp32(20, spread=30.0),
    "wkv4_empty_state": wkv4_empty_state,
    "wkv4_bf16": wkv4_bf16,
    "wkv4_segments": wkv4_segments,
    "wkv4_dispatch": wkv4_dispatch,
    "wkv4_T100": wkv4_fp32(100, spread=10.0),
    "wkv4_custom_op": wkv4_custom_op,
    "wkv4_time_split_T37": wkv4_time_split(37, 3),
    "wkv4_time_split_T100_no_state": wkv4_time_split(100, 4, state=False),
    "delta_product_nh1_T33_gated": delta_product_fp32(33, 1, True),
    "delta_product_nh1_T7": delta_product_fp32(7, 1, False),
    "delta_product_nh2_T1_gated": delta_product_fp32(1, 2, True),
    "delta_product_nh2_T7_gated": delta_product_fp32(7, 2, True),
    "delta_product_nh3_T33": delta_product_fp32(33, 3, False),
    "delta_product_vblocks": delta_product_vblocks,
    "delta_product_bf16": delta_product_bf16,
    "delta_product_segments": delta_product_segments,
    "delta_product_dispatch": delta_product_dispatch,
    "delta_product_dispatch_v_pieces": delta_product_dispatch_v_pieces,
    "delta_product_c32_vsplit_T37": delta_product_variant("c32_vsplit", 37, 2, True),
    "delta_product_c32_vsplit_T100_nh1": delta_product_variant("c32_vsplit", 100, 1, False),
    "delta_product_c64_atomic_T37_nh3": delta_product_variant("c64_atomic", 37, 3, True),
    "delta_product_c16_two_pass_T100": delta_product_variant("c16_two_pass", 100, 2, True),
    "delta_product_c32_two_pass_vsplit_T37_nh3": delta_product_variant("c32_two_pass_vsplit", 37, 3, False),
    "delta_product_custom_op": delta_product_custom_op,
    "refusals": refusals,
}
SLOW_CASES: dict[str, Callable[[], None]] = {
    f"realistic_{op}": realistic(op) for op in ("rwkv7", "wkv4", "delta_product")
}


def run(names: list[str]) -> None:
    table = {**CASES, **SLOW_CASES}
    for name in names:
        torch.manual_seed(0)
        try:
            table[name]()
            result = {"case": name, "ok": True, "error": ""}
        except Exception:
            result = {"case": name, "ok": False, "error": traceback.format_exc()}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run(sys.argv[1:] or list(CASES))
