"""The kernel benchmark's float64 check and the peers' decay parametrizations, on the CPU: the
check finds a wrong gradient and names it, and each peer's w, mapped back, is skein's decay
(checked against token loops written from each peer's own formula)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from skein.rwkv.ops.bench import format_row
from skein.rwkv.ops.common.accuracy import Float64Check, rel_rms
from skein.rwkv.ops.common.bench import BenchShape
from skein.rwkv.ops.rwkv7.bench import RWKV7_NAMES, rwkv7_bench_inputs, rwkv7_runner
from skein.rwkv.ops.rwkv7.naive import rwkv7_naive
from skein.rwkv.ops.rwkv7.peers import (
    rwkv_lm_w_from_skein,
    rwkv_lm_w_to_skein,
    wind_w_from_skein,
    wind_w_to_skein,
)

SHAPE = BenchShape(B=2, T=23, H=5, K=8, dtype=torch.float32, device="cpu")


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    return dict(zip(RWKV7_NAMES, rwkv7_bench_inputs(SHAPE, seed), strict=True))


def _loop_vk(r, decay, k, v, a, b):
    """RWKV-7 with the state as [V, K] and the decay given per token: S = S diag(decay) +
    (S a) b^T + v k^T, o = S r (the form RWKV-LM and wind_rwkv document)."""
    B, T, H, K = r.shape
    S = torch.zeros(B, H, v.shape[-1], K, dtype=r.dtype)
    out = []
    for t in range(T):
        sa = torch.einsum("bhvk,bhk->bhv", S, a[:, t])
        S = (
            S * decay[:, t, :, None, :]
            + sa[..., None] * b[:, t, :, None, :]
            + v[:, t, ..., None] * k[:, t, :, None, :]
        )
        out.append(torch.einsum("bhvk,bhk->bhv", S, r[:, t]))
    return torch.stack(out, dim=1)


def test_same_seed_same_inputs_and_realistic() -> None:
    x, y, z = _inputs(0), _inputs(0), _inputs(1)
    assert all(torch.equal(x[n], y[n]) for n in RWKV7_NAMES)
    assert not torch.equal(x["r"], z["r"])
    w = x["w"]
    assert (w < 0).all() and (w > -math.exp(-0.5)).all() and w.std() > 0.05


def test_float64_check_passes_the_loop_and_names_a_wrong_gradient() -> None:
    x = _inputs()

    def cut(_: object, t: torch.Tensor) -> torch.Tensor:
        return t[:1, :, :2]

    check = Float64Check(lambda **kw: [rwkv7_naive(**kw)[0]], x, cut, cut)
    good = check(lambda **kw: [rwkv7_naive(**kw)[0]])
    assert good.error < 1e-5 and good.floor < 1e-6

    class ScaleGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.clone()

        @staticmethod
        def backward(ctx, g):
            return 1.05 * g

    bad = check(lambda r, w, k, v, a, b: [rwkv7_naive(r, w, k, v, ScaleGrad.apply(a), b)[0]])
    assert bad.what == "da" and 0.03 < bad.error < 0.07
    assert str(bad).startswith(f"{bad.error:.1e} (da)")


def test_wind_parametrization_is_skeins_decay() -> None:
    x = {n: t.detach().double() for n, t in _inputs().items()}
    w_wind = wind_w_from_skein(x["w"])
    assert w_wind.dtype == torch.float64
    assert rel_rms(wind_w_to_skein(w_wind), x["w"]) < 1e-14
    # wind_rwkv's README: s = s * exp(-exp(w)) + (s a) b^T + v k^T, y = s r
    theirs = _loop_vk(x["r"], torch.exp(-torch.exp(w_wind)), x["k"], x["v"], x["a"], x["b"])
    ours = rwkv7_naive(**x)[0]
    assert rel_rms(theirs, ours) < 1e-12


def test_rwkv_lm_parametrization_is_skeins_decay() -> None:
    x = {n: t.detach().double() for n, t in _inputs().items()}
    w_lm = rwkv_lm_w_from_skein(x["w"])
    assert rel_rms(rwkv_lm_w_to_skein(w_lm), x["w"]) < 1e-12
    # RWKV-LM clampw_v3: decay = exp(-exp(-0.5) * sigmoid(w)) inside the kernel
    decay = torch.exp(-math.exp(-0.5) * torch.sigmoid(w_lm))
    theirs = _loop_vk(x["r"], decay, x["k"], x["v"], x["a"], x["b"])
    assert rel_rms(theirs, rwkv7_naive(**x)[0]) < 1e-10
    # a decay RWKV-LM cannot express is clamped into its range, not turned into inf
    edge = rwkv_lm_w_from_skein(torch.tensor([0.0, -math.exp(-0.5), -1.0]))
    assert torch.isfinite(edge).all()


def test_peer_style_runner_checks_in_its_own_parametrization() -> None:
    """A kernel taking wind_rwkv's w, checked through the map back to skein's decay, has float
    rounding error only; the same kernel checked without the map is far off."""
    x = _inputs()
    leaves = {n: t.detach().clone().requires_grad_() for n, t in x.items()}
    leaves["w"] = wind_w_from_skein(x["w"]).requires_grad_()

    def wind_like(r, w, k, v, a, b):
        return [_loop_vk(r, torch.exp(-torch.exp(w)), k, v, a, b)]

    row = {"name": "wind-like loop", "status": "ok", "fwd_ms": 1.0, "fwd_bwd_ms": 2.0}
    acc = rwkv7_runner(leaves, wind_like, wind_w_to_skein).accuracy()
    assert acc.error < 1e-5
    wrong = rwkv7_runner(leaves, wind_like).accuracy()
    assert wrong.error > 0.1
    row.update(floor_fwd_mb=1, floor_fwd_bwd_mb=2, fwd_gbps=1, fwd_bwd_gbps=1)
    row.update(error=acc.error, error_of=acc.what, error_floor=acc.floor)
    assert f"{acc.error:.1e} ({acc.what}" in format_row(row)


def test_runner_times_what_it_checks() -> None:
    """fwd_bwd() returns the gradients of the inputs it was built on (random cotangents)."""
    x = _inputs()
    runner = rwkv7_runner(x, lambda **kw: [rwkv7_naive(**kw)[0]])
    grads = runner.fwd_bwd()
    assert len(grads) == 6 and all(g.shape == x[n].shape for g, n in zip(grads, RWKV7_NAMES, strict=True))
    assert all(g.abs().sum() > 0 for g in grads)
    assert runner.floor_fwd == 7 * x["r"].numel() * 4
    y = runner.fwd()[0]
    assert not y.requires_grad and rel_rms(y, rwkv7_naive(**x)[0]) == 0
    assert F.mse_loss(y, torch.zeros_like(y)) > 0
