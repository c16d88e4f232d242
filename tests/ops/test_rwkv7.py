"""RWKV-7 WKV: the chunked PyTorch form equals the token loop (outputs, final state, gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skein.rwkv.ops.rwkv7 import rwkv7, rwkv7_naive
from skein.rwkv.ops.rwkv7.parallel import rwkv7_parallel
from tests.utils import assert_close

NAMES = ("r", "w", "k", "v", "a", "b", "state")


def make_inputs(
    B: int, T: int, H: int, K: int, V: int, dtype: torch.dtype, decay: str = "model", seed: int = 0
) -> list[torch.Tensor]:
    """Random inputs shaped like the model makes them: a = -kk, b = kk * iclr with kk unit-norm per
    head and iclr in (0, 1); w = -exp(-0.5) * sigmoid(x) in (-0.61, 0) for decay="model", and a mix
    of near-1 (w ~ -1e-4) and strong (w down to -5) per-channel decays for decay="strong"."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    r, k, v = randn(B, T, H, K), randn(B, T, H, K), randn(B, T, H, V)
    kk = F.normalize(randn(B, T, H, K), dim=-1)
    iclr = torch.sigmoid(2 * randn(B, T, H, K))
    if decay == "model":
        w = -torch.exp(torch.tensor(-0.5, dtype=torch.float64)) * torch.sigmoid(2 * randn(B, T, H, K))
    else:
        span = torch.rand(B, T, H, K, generator=g, dtype=torch.float64)
        w = torch.where(span < 0.5, -1e-4 * span, -5.0 * span)
    state = 0.3 * randn(B, H, K, V)
    return [x.to(dtype) for x in (r, w, k, v, -kk, kk * iclr, state)]


def run_with_grads(fn, inputs: list[torch.Tensor], **kw) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Outputs (o, final state) and gradients of a fixed random projection of both w.r.t. all inputs."""
    xs = [x.clone().requires_grad_() for x in inputs]
    o, s = fn(*xs[:6], state=xs[6], **kw)
    g = torch.Generator().manual_seed(99)
    proj_o = torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype)
    proj_s = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.dtype)
    loss = (o * proj_o).sum() + (s * proj_s).sum()
    grads = torch.autograd.grad(loss, xs)
    return [o.detach(), s.detach()], list(grads)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("T", [1, 15, 63])
@pytest.mark.parametrize("decay", ["model", "strong"])
def test_parallel_matches_naive(dtype: torch.dtype, tol: float, T: int, decay: str) -> None:
    inputs = make_inputs(2, T, 3, 16, 12, dtype, decay)
    (o, s), grads = run_with_grads(rwkv7_parallel, inputs, scale=0.7)
    (o_ref, s_ref), grads_ref = run_with_grads(rwkv7_naive, inputs, scale=0.7)
    assert o.dtype == dtype and s.dtype == dtype
    assert_close(o, o_ref, tol, "output")
    assert_close(s, s_ref, tol, "final state")
    for name, gr, gr_ref in zip(NAMES, grads, grads_ref):
        assert_close(gr, gr_ref, tol, f"grad of {name}")


@pytest.mark.parametrize("chunk_size,sub_chunk_size", [(1, 1), (8, 2), (16, 16), (32, 4), (64, 8)])
def test_chunk_sizes_agree(chunk_size: int, sub_chunk_size: int) -> None:
    inputs = make_inputs(1, 50, 2, 8, 8, torch.float64, "strong", seed=3)
    o_ref, s_ref = rwkv7_naive(*inputs[:6], state=inputs[6])
    o, s = rwkv7_parallel(*inputs[:6], state=inputs[6], chunk_size=chunk_size, sub_chunk_size=sub_chunk_size)
    assert_close(o, o_ref, 1e-10, "output")
    assert_close(s, s_ref, 1e-10, "final state")


def test_state_carried_across_segments() -> None:
    r, w, k, v, a, b, state = make_inputs(2, 64, 2, 16, 16, torch.float64, seed=5)
    full, full_state = rwkv7_parallel(r, w, k, v, a, b, state)
    outs, s, start = [], state, 0
    for n in (7, 16, 30, 11):
        sl = slice(start, start + n)
        o, s = rwkv7_parallel(r[:, sl], w[:, sl], k[:, sl], v[:, sl], a[:, sl], b[:, sl], s)
        outs.append(o)
        start += n
    assert_close(torch.cat(outs, 1), full, 1e-10, "segmented output")
    assert_close(s, full_state, 1e-10, "segmented final state")


def test_extreme_decays_stay_finite() -> None:
    """w = -30 (decay ~1e-13) and w ~ -1e-7 (decay ~1) in float32 neither overflow nor drift."""
    r, _, k, v, a, b, state = make_inputs(1, 48, 2, 16, 16, torch.float32, seed=7)
    w = torch.full_like(r, -30.0)
    w[..., ::2] = -1e-7
    inputs = [r, w, k, v, a, b, state]
    (o, s), grads = run_with_grads(rwkv7_parallel, inputs)
    ref_inputs = [x.double() for x in inputs]
    (o_ref, s_ref), grads_ref = run_with_grads(rwkv7_naive, ref_inputs)
    assert_close(o, o_ref, 1e-5, "output")
    assert_close(s, s_ref, 1e-5, "final state")
    for name, gr, gr_ref in zip(NAMES, grads, grads_ref):
        assert_close(gr, gr_ref, 1e-5, f"grad of {name}")


def test_zero_state_default_and_bf16_inputs() -> None:
    r, w, k, v, a, b, _ = make_inputs(2, 20, 2, 16, 16, torch.float32, seed=11)
    o_none, s_none = rwkv7_parallel(r, w, k, v, a, b)
    o_zero, s_zero = rwkv7_naive(r, w, k, v, a, b, torch.zeros_like(s_none))
    assert_close(o_none, o_zero, 1e-5, "output with state=None")
    o16, s16 = rwkv7_parallel(*(x.bfloat16() for x in (r, w, k, v, a, b)))
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert_close(o16, o_none, 5e-2, "bf16 output")


def test_dispatch_backends() -> None:
    inputs = make_inputs(1, 9, 2, 8, 8, torch.float64, seed=13)
    o_t, s_t = rwkv7(*inputs, backend="parallel")
    o_r, s_r = rwkv7(*inputs, backend="naive")
    assert_close(o_t, o_r, 1e-10, "parallel vs naive output")
    assert_close(s_t, s_r, 1e-10, "parallel vs naive state")


def test_invalid_chunk_sizes_raise() -> None:
    inputs = make_inputs(1, 4, 1, 4, 4, torch.float64)
    with pytest.raises(ValueError, match="sub_chunk_size"):
        rwkv7_parallel(*inputs[:6], chunk_size=16, sub_chunk_size=6)


@pytest.mark.parametrize("fn", [rwkv7_naive, rwkv7_parallel])
def test_gradcheck(fn) -> None:
    inputs = [x.requires_grad_() for x in make_inputs(1, 5, 1, 3, 2, torch.float64, "strong", seed=17)]
    assert torch.autograd.gradcheck(lambda *xs: fn(*xs[:6], state=xs[6]), inputs)
