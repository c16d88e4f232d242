"""Device-agnostic checks for the sequence-mixing kernels: realistic input builders, comparison
of outputs and all gradients with the float64 token loop, and segmented == one pass. Used by the
interpreter checks (tests/ops/triton_cases.py) and the GPU acceptance test (tests/gpu/)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from skein.rwkv.ops.delta_product.naive import delta_product_naive
from skein.rwkv.ops.rwkv7.naive import rwkv7_naive
from skein.rwkv.ops.wkv4.naive import wkv4_naive
from tests.utils import assert_close

FP32_TOL = 1e-4
BF16_TOL = 1e-2


def _flat(out) -> list[Tensor]:
    if isinstance(out, Tensor):
        return [out]
    return [t for o in out for t in _flat(o)]


def _leaf(x, dtype: torch.dtype | None = None):
    """A fresh leaf requiring grad (tuples leaf by leaf), optionally cast."""
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(_leaf(t, dtype) for t in x)
    return (x.to(dtype) if dtype is not None else x).detach().clone().requires_grad_()


def _leaves(inputs: dict, dtype: torch.dtype | None = None) -> dict:
    return {n: _leaf(x, dtype) for n, x in inputs.items()}


def _grads(x) -> list[Tensor]:
    return [t.grad for t in _flat(x)]


def check_vs_reference(kernel: Callable, reference: Callable, inputs: dict, tol: float, **kw) -> None:
    """Outputs, final state and the gradient of every tensor input (for random cotangents) of
    kernel(**inputs) against reference(**inputs in float64)."""
    ours = _leaves(inputs)
    ref = _leaves(inputs, torch.float64)
    out = _flat(kernel(**ours, **kw))
    expected = _flat(reference(**ref))
    gen = torch.Generator().manual_seed(7)
    cot = [torch.randn(e.shape, generator=gen, dtype=torch.float64).to(e.device) for e in expected]
    for i, (o, e) in enumerate(zip(out, expected)):
        assert_close(o, e, tol, f"output {i}")
    sum((o.double() * c).sum() for o, c in zip(out, cot)).backward()
    sum((e * c).sum() for e, c in zip(expected, cot)).backward()
    for name in inputs:
        if ours[name] is None:
            continue
        assert ours[name].grad is not None, f"no gradient for {name}"
        assert ours[name].grad.dtype == ours[name].dtype, f"d{name} dtype {ours[name].grad.dtype}"
        assert_close(ours[name].grad, ref[name].grad, tol, f"d{name}")


def check_segments(
    fn: Callable, inputs: dict, seq_args: dict[str, int], state_key: str, cuts: int = 4, tol: float = 1e-5
) -> None:
    """Running `cuts` segments with the state carried equals one pass: outputs, final state and
    the gradient of every input (seq_args: the arguments cut along dim 1)."""
    one = _leaves(inputs)
    seg = _leaves(inputs)
    o_full, s_full = fn(**one)
    T = next(x for n, x in inputs.items() if n in seq_args).shape[1]
    bounds = [round(i * T / cuts) for i in range(cuts + 1)]
    outs, state = [], seg[state_key]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        part = {n: (x[:, lo:hi] if n in seq_args and x is not None else x) for n, x in seg.items()}
        part[state_key] = state
        o, state = fn(**part)
        outs.append(o)
    o_seg = torch.cat(outs, dim=1)
    assert_close(o_seg, o_full, tol, "segmented output")
    for a, b in zip(_flat(state), _flat(s_full)):
        assert_close(a, b, tol, "segmented final state")
    gen = torch.Generator().manual_seed(3)
    cot = torch.randn(o_full.shape, generator=gen).to(o_full.device, o_full.dtype)
    cs = [torch.randn(s.shape, generator=gen).to(s.device) for s in _flat(s_full)]
    for o, s in ((o_full, s_full), (o_seg, state)):
        ((o * cot).sum() + sum((x * c).sum() for x, c in zip(_flat(s), cs))).backward()
    for n in inputs:
        if one[n] is not None:
            for i, (a, b) in enumerate(zip(_grads(seg[n]), _grads(one[n]))):
                assert_close(a, b, tol, f"segmented d{n}[{i}]")


def rwkv7_inputs(
    B: int, T: int, H: int, K: int, V: int, decay: str = "model", seed: int = 0, device: str = "cpu"
) -> dict:
    """Inputs shaped like an RWKV-7 layer's: a = -kk, b = kk * iclr with kk unit-norm,
    w = -exp(-softplus(-x) - 0.5) ("model"), near 0 ("slow": decay ~ 1) or in [-6, -2] ("fast")."""
    g = torch.Generator().manual_seed(seed)
    kk = F.normalize(torch.randn(B, T, H, K, generator=g), dim=-1)
    iclr = torch.sigmoid(torch.randn(B, T, H, K, generator=g))
    x = torch.randn(B, T, H, K, generator=g) * 2
    w = {
        "model": -torch.exp(-F.softplus(-x) - 0.5),
        "slow": -torch.exp(x.clamp(-2, 2) - 7.0),
        "fast": -2.0 - 4.0 * torch.rand(B, T, H, K, generator=g),
    }[decay]
    out = {
        "r": torch.randn(B, T, H, K, generator=g),
        "w": w,
        "k": torch.randn(B, T, H, K, generator=g) * K**-0.5,
        "v": torch.randn(B, T, H, V, generator=g),
        "a": -kk,
        "b": kk * iclr,
        "state": torch.randn(B, H, K, V, generator=g) * 0.5,
    }
    return _to(out, device)


def wkv4_inputs(B: int, T: int, C: int, spread: float = 3.0, seed: int = 0, device: str = "cpu") -> dict:
    """time_decay spread over [-6, 2] (decay per step from ~1 to e^-7.4), k with scale `spread`,
    and a state reached by running a few random tokens."""
    g = torch.Generator().manual_seed(seed)
    w = -torch.exp(torch.linspace(-6.0, 2.0, C)[torch.randperm(C, generator=g)])
    u = torch.randn(C, generator=g)
    _, state = wkv4_naive(w, u, torch.randn(B, 5, C, generator=g) * spread, torch.randn(B, 5, C, generator=g))
    out = {
        "w": w,
        "u": u,
        "k": torch.randn(B, T, C, generator=g) * spread,
        "v": torch.randn(B, T, C, generator=g),
        "state": state,
    }
    return _to(out, device)


def delta_product_inputs(
    B: int, T: int, nh: int, H: int, K: int, V: int, gate: bool, seed: int = 0, device: str = "cpu"
) -> dict:
    """Unit-norm keys, beta in (0, 2) (negative eigenvalues allowed), gates logsigmoid(x + 2)."""
    g = torch.Generator().manual_seed(seed)
    out = {
        "q": torch.randn(B, T, H, K, generator=g),
        "k": F.normalize(torch.randn(B, T, nh, H, K, generator=g), dim=-1),
        "v": torch.randn(B, T, nh, H, V, generator=g),
        "beta": 2 * torch.rand(B, T, nh, H, generator=g),
        "g": F.logsigmoid(torch.randn(B, T, H, generator=g) + 2) if gate else None,
        "state": torch.randn(B, H, K, V, generator=g) * 0.5,
    }
    return _to(out, device)


def _to(inputs: dict, device: str) -> dict:
    return {
        n: None if x is None else (tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device))
        for n, x in inputs.items()
    }


def cast(inputs: dict, dtype: torch.dtype, keep: tuple[str, ...]) -> dict:
    return {n: x if (x is None or n in keep) else x.to(dtype) for n, x in inputs.items()}


# kernel and float reference as fn(**inputs); kernel modules are imported on first use


def rwkv7_pair(block_v: int | None = None, scale: float = 0.8, **launch) -> tuple[Callable, Callable]:
    """launch: fields of skein.rwkv.ops.rwkv7.chunk.Rwkv7Launch (chunk, bwd_block_v, ...)."""
    from skein.rwkv.ops.rwkv7.chunk import Rwkv7Launch, chunk_rwkv7

    variant = Rwkv7Launch(**launch) if launch else None

    def kernel(r, w, k, v, a, b, state):
        return chunk_rwkv7(r, w, k, v, a, b, state, scale, block_v=block_v, launch=variant)

    def reference(r, w, k, v, a, b, state):
        return rwkv7_naive(r, w, k, v, a, b, state, scale)

    return kernel, reference


def wkv4_pair(block_c: int | None = None, time_split: int = 1) -> tuple[Callable, Callable]:
    from skein.rwkv.ops.wkv4.fused import fused_wkv4

    def kernel(w, u, k, v, state):
        return fused_wkv4(w, u, k, v, state, block_c=block_c, time_split=time_split)

    def reference(w, u, k, v, state):
        return wkv4_naive(w, u, k, v, state)

    return kernel, reference


def wkv4_leaves(inputs: dict) -> dict:
    """wkv4's state is a tuple: make each of its parts a separate argument."""
    aa, bb, pp = inputs.pop("state")
    return {**inputs, "aa": aa, "bb": bb, "pp": pp}


def split_state(kernel: Callable) -> Callable:
    """fn(w, u, k, v, state) as fn(w, u, k, v, aa, bb, pp), so each state part gets a gradient."""

    def fn(w, u, k, v, aa, bb, pp):
        return kernel(w, u, k, v, (aa, bb, pp))

    return fn


def delta_product_pair(block_v: int | None = None, scale: float = 0.3, **launch) -> tuple[Callable, Callable]:
    """launch: fields of skein.rwkv.ops.delta_product.chunk.DeltaProductLaunch."""
    from skein.rwkv.ops.delta_product.chunk import DeltaProductLaunch, chunk_delta_product

    variant = DeltaProductLaunch(**launch) if launch else None

    def kernel(q, k, v, beta, g, state):
        return chunk_delta_product(q, k, v, beta, g, state, scale, block_v=block_v, launch=variant)

    def reference(q, k, v, beta, g, state):
        return delta_product_naive(q, k, v, beta, g, state, scale)

    return kernel, reference
