"""RWKV-4 WKV op: the token loop equals the definition, the chunked form equals the token loop
(values, final state and gradients), state carries across segments, and nothing overflows."""

from __future__ import annotations

import math

import pytest
import torch

from skein.rwkv.ops.wkv4 import wkv4, wkv4_naive
from skein.rwkv.ops.wkv4.parallel import wkv4_parallel
from tests.utils import assert_close


def make_inputs(
    T: int,
    dtype: torch.dtype = torch.float64,
    B: int = 2,
    C: int = 6,
    k_scale: float = 2.0,
    w_range: tuple[float, float] = (1e-2, 3.0),
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """w = -exp(time_decay) spread log-uniformly over -w_range, k ~ N(0, k_scale^2), and a state
    in the running-max form (bb >= 1 at the maximum), as a previous segment leaves it."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    lo, hi = math.log(w_range[0]), math.log(w_range[1])
    decay = lo + (hi - lo) * torch.rand(C, generator=gen, dtype=torch.float64)
    inputs = {
        "w": -torch.exp(decay),
        "u": 0.5 * rnd(C),
        "k": k_scale * rnd(B, T, C),
        "v": rnd(B, T, C),
        "aa": rnd(B, C),
        "bb": 1.0 + torch.rand(B, C, generator=gen, dtype=torch.float64),
        "pp": rnd(B, C),
    }
    return {n: x.to(dtype) for n, x in inputs.items()}


def run(fn, inp: dict, with_state: bool = True, **kw):
    state = (inp["aa"], inp["bb"], inp["pp"]) if with_state else None
    return fn(inp["w"], inp["u"], inp["k"], inp["v"], state, **kw)


def outputs_and_grads(fn, inp: dict, **kw) -> list[torch.Tensor]:
    """y, the final state and the gradients of a random linear loss on y and the final state
    with respect to w, u, k, v, aa, bb, pp."""
    leaves = {n: x.detach().clone().requires_grad_() for n, x in inp.items()}
    y, state = run(fn, leaves, **kw)
    gen = torch.Generator().manual_seed(7)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in (y, *state)]
    loss = sum((t * g).sum() for t, g in zip((y, *state), weights))
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return [y.detach(), *(s.detach() for s in state), *grads]


NAMES = ["y", "aa", "bb", "pp", "grad w", "grad u", "grad k", "grad v", "grad aa", "grad bb", "grad pp"]


def direct(inp: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The docstring sums of naive.py computed literally in float64 (no running maximum), with the
    initial state contributing aa e^{pp + t w} and bb e^{pp + t w}. Returns y, and the implied
    final sums aa e^pp and bb e^pp."""
    w, u, k, v = inp["w"], inp["u"], inp["k"], inp["v"]
    a0, b0 = inp["aa"] * inp["pp"].exp(), inp["bb"] * inp["pp"].exp()
    B, T, C = k.shape
    ys = []
    for t in range(T):
        num, den = a0 * torch.exp(t * w), b0 * torch.exp(t * w)
        for i in range(t):
            e = torch.exp((t - 1 - i) * w + k[:, i])
            num, den = num + e * v[:, i], den + e
        e = torch.exp(u + k[:, t])
        ys.append((num + e * v[:, t]) / (den + e))
    fa, fb = a0 * torch.exp(T * w), b0 * torch.exp(T * w)
    for i in range(T):
        e = torch.exp((T - 1 - i) * w + k[:, i])
        fa, fb = fa + e * v[:, i], fb + e
    return torch.stack(ys, dim=1), fa, fb


@pytest.mark.parametrize("with_state", [False, True])
def test_naive_matches_direct_definition(with_state: bool) -> None:
    inp = make_inputs(T=9)
    if not with_state:
        inp.update(aa=torch.zeros_like(inp["aa"]), bb=torch.zeros_like(inp["bb"]))
    y_ref, fa, fb = direct(inp)
    y, (aa, bb, pp) = run(wkv4_naive, inp, with_state=with_state)
    assert_close(y, y_ref, 1e-13, "y")
    assert_close(aa * pp.exp(), fa, 1e-13, "aa e^pp")
    assert_close(bb * pp.exp(), fb, 1e-13, "bb e^pp")


@pytest.mark.parametrize("T", [1, 17, 100])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 5e-6)])
def test_parallel_matches_naive(T: int, dtype: torch.dtype, tol: float) -> None:
    inp = make_inputs(T, dtype)
    ref = outputs_and_grads(wkv4_naive, inp)
    got = outputs_and_grads(wkv4_parallel, inp)
    for a, b, name in zip(got, ref, NAMES):
        assert a.dtype == b.dtype, f"{name}: dtype {a.dtype} != {b.dtype}"
        assert_close(a, b, tol, name)


def test_parallel_matches_naive_from_empty_state() -> None:
    inp = make_inputs(T=37)
    y_ref, state_ref = run(wkv4_naive, inp, with_state=False)
    y, state = run(wkv4_parallel, inp, with_state=False)
    assert_close(y, y_ref, 1e-12, "y")
    for a, b, name in zip(state, state_ref, ("aa", "bb", "pp")):
        assert_close(a, b, 1e-12, name)


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
def test_chunk_size_does_not_change_the_result(chunk_size: int) -> None:
    inp = make_inputs(T=29)
    ref = outputs_and_grads(wkv4_parallel, inp, chunk_size=5)
    got = outputs_and_grads(wkv4_parallel, inp, chunk_size=chunk_size)
    for a, b, name in zip(got, ref, NAMES):
        assert_close(a, b, 1e-12, name)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-4)])
def test_no_overflow_for_extreme_keys_and_decays(dtype: torch.dtype, tol: float) -> None:
    """k up to +-60 and w from -1e-3 to -20: every exp argument stays <= 0."""
    inp = make_inputs(T=50, dtype=dtype, C=16, k_scale=1.0, w_range=(1e-3, 20.0), seed=3)
    gen = torch.Generator().manual_seed(4)
    inp["k"] = (120 * torch.rand(inp["k"].shape, generator=gen) - 60).to(dtype)
    inp["k"][:, ::7] = 60.0
    inp["k"][:, 3::7] = -60.0
    inp["pp"] = inp["pp"] * 30
    ref = outputs_and_grads(wkv4_naive, inp)
    got = outputs_and_grads(wkv4_parallel, inp)
    for a, b, name in zip(got, ref, NAMES):
        assert_close(a, b, tol, name)


def test_state_carries_across_segments() -> None:
    inp = make_inputs(T=100)
    y_full, state_full = run(wkv4_parallel, inp)
    state, ys, start = (inp["aa"], inp["bb"], inp["pp"]), [], 0
    for n in (7, 1, 30, 62):
        y, state = wkv4_parallel(
            inp["w"], inp["u"], inp["k"][:, start : start + n], inp["v"][:, start : start + n], state
        )
        ys.append(y)
        start += n
    assert_close(torch.cat(ys, dim=1), y_full, 1e-12, "segmented y")
    for a, b, name in zip(state, state_full, ("aa", "bb", "pp")):
        assert_close(a, b, 1e-12, name)


def test_gradcheck_tiny() -> None:
    inp = make_inputs(T=5, B=1, C=3)
    leaves = [x.detach().clone().requires_grad_() for x in inp.values()]

    def fn(w, u, k, v, aa, bb, pp):
        y, state = wkv4_parallel(w, u, k, v, (aa, bb, pp), chunk_size=2)
        return (y, *state)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8)


def test_low_precision_inputs_compute_in_float32() -> None:
    inp = make_inputs(T=20, dtype=torch.float32)
    ref_y, ref_state = run(wkv4_parallel, inp)
    low = {n: (x.bfloat16() if n in ("k", "v") else x) for n, x in inp.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = run(wkv4_parallel, low)
    assert y.dtype == torch.bfloat16
    assert all(s.dtype == torch.float32 for s in state)
    assert_close(y, ref_y, 2e-2, "bf16 y")
    assert_close(state[0], ref_state[0], 2e-2, "bf16 aa")


@pytest.mark.parametrize("backend,fn", [("parallel", wkv4_parallel), ("naive", wkv4_naive)])
def test_dispatch(backend: str, fn) -> None:
    inp = make_inputs(T=11)
    y, state = run(lambda *a: wkv4(*a, backend=backend), inp)
    y_ref, state_ref = run(fn, inp)
    assert torch.equal(y, y_ref)
    assert all(torch.equal(a, b) for a, b in zip(state, state_ref))


def test_rejects_bad_chunk_size() -> None:
    inp = make_inputs(T=4)
    with pytest.raises(ValueError, match="chunk_size"):
        run(wkv4_parallel, inp, chunk_size=0)
