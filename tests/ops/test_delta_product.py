"""DeltaProduct op: the chunked form equals the token loop (values and gradients), state carries
across segments, and the math has the properties the paper relies on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skein.rwkv.ops.common.kernel_checks import head_piece
from skein.rwkv.ops.delta_product import delta_product, delta_product_naive
from skein.rwkv.ops.delta_product.parallel import delta_product_parallel
from tests.utils import assert_close


def make_inputs(
    T: int,
    n_h: int,
    gate: bool,
    beta_max: float,
    dtype: torch.dtype = torch.float64,
    B: int = 2,
    H: int = 3,
    K: int = 16,
    V: int = 8,
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """Random inputs as the model produces them: unit keys, beta in (0, beta_max), log-sigmoid gates."""
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    return {
        "q": F.normalize(rnd(B, T, H, K), dim=-1).to(dtype),
        "k": F.normalize(rnd(B, T, n_h, H, K), dim=-1).to(dtype),
        "v": rnd(B, T, n_h, H, V).to(dtype),
        "beta": (beta_max * torch.rand(B, T, n_h, H, generator=gen, dtype=torch.float64)).to(dtype),
        "g": F.logsigmoid(rnd(B, T, H) + 2.0).to(dtype) if gate else None,
        "state": rnd(B, H, K, V).to(dtype),
    }


def outputs_and_grads(fn, inputs: dict, **kw) -> list[torch.Tensor]:
    """o, final state, and the gradients of a random linear loss wrt every input."""
    leaves = {n: x.detach().clone().requires_grad_(True) for n, x in inputs.items() if x is not None}
    o, S = fn(**{**inputs, **leaves}, **kw)
    gen = torch.Generator().manual_seed(7)
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.dtype)
    w_s = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(S.dtype)
    loss = (o * w_o).sum() + (S * w_s).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return [o.detach(), S.detach(), *grads]


NAMES = ("o", "state", "dq", "dk", "dv", "dbeta")


def compare(actual: list[torch.Tensor], expected: list[torch.Tensor], tol: float, gate: bool) -> None:
    names = [*NAMES, *(["dg"] if gate else []), "dstate"]
    assert len(actual) == len(expected) == len(names)
    for a, e, n in zip(actual, expected, names):
        assert_close(a, e, tol, n)


@pytest.mark.parametrize("n_h", [1, 2, 3])
@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("beta_max", [1.0, 2.0])
def test_parallel_matches_naive_fp64(n_h: int, gate: bool, beta_max: float) -> None:
    inputs = make_inputs(T=40, n_h=n_h, gate=gate, beta_max=beta_max)
    ref = outputs_and_grads(delta_product_naive, inputs)
    compare(outputs_and_grads(delta_product_parallel, inputs, chunk_size=16), ref, 1e-11, gate)


@pytest.mark.parametrize("n_h", [1, 2, 3])
@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("beta_max", [1.0, 2.0])
def test_parallel_matches_naive_fp32(n_h: int, gate: bool, beta_max: float) -> None:
    inputs = make_inputs(T=40, n_h=n_h, gate=gate, beta_max=beta_max)
    ref = outputs_and_grads(delta_product_naive, inputs)
    f32 = {n: None if x is None else x.float() for n, x in inputs.items()}
    out = outputs_and_grads(delta_product_parallel, f32, chunk_size=16)
    assert out[0].dtype == torch.float32 and out[1].dtype == torch.float32
    compare(out, ref, 1e-5, gate)


@pytest.mark.parametrize("T", [1, 15, 63])
@pytest.mark.parametrize("chunk_size", [8, 32])
def test_odd_lengths(T: int, chunk_size: int) -> None:
    inputs = make_inputs(T=T, n_h=2, gate=True, beta_max=2.0)
    ref = outputs_and_grads(delta_product_naive, inputs)
    compare(outputs_and_grads(delta_product_parallel, inputs, chunk_size=chunk_size), ref, 1e-11, True)


def test_scale_and_no_initial_state() -> None:
    inputs = {**make_inputs(T=21, n_h=2, gate=True, beta_max=2.0), "state": None}
    o_ref, s_ref = delta_product_naive(**inputs, scale=0.3)
    o, s = delta_product_parallel(**inputs, scale=0.3, chunk_size=8)
    assert_close(o, o_ref, 1e-11, "o")
    assert_close(s, s_ref, 1e-11, "state")


@pytest.mark.parametrize("fn", [delta_product_naive, delta_product_parallel])
def test_segments_carry_state(fn) -> None:
    """Four segments with the state passed on == one pass over the whole sequence."""
    inputs = make_inputs(T=50, n_h=2, gate=True, beta_max=2.0)
    o_full, s_full = fn(**inputs)
    outs, S = [], inputs["state"]
    for a, b in [(0, 7), (7, 20), (20, 21), (21, 50)]:
        seg = {n: x[:, a:b] for n, x in inputs.items() if n != "state"}
        o, S = fn(**seg, state=S)
        outs.append(o)
    assert_close(torch.cat(outs, 1), o_full, 1e-12, "segmented o")
    assert_close(S, s_full, 1e-12, "segmented state")


def test_strong_gates_stay_finite() -> None:
    """Gates of -40 per token (e^-1280 over a chunk): no overflow, values and gradients still agree."""
    inputs = make_inputs(T=40, n_h=2, gate=True, beta_max=2.0)
    inputs["g"] = inputs["g"] * 40.0 - 20.0
    f32 = {n: x.float() for n, x in inputs.items()}
    ref = outputs_and_grads(delta_product_naive, inputs)
    compare(outputs_and_grads(delta_product_parallel, f32, chunk_size=32), ref, 1e-5, True)


def test_naive_gradcheck() -> None:
    inputs = make_inputs(T=3, n_h=2, gate=True, beta_max=2.0, B=1, H=2, K=3, V=2)
    names = list(inputs)
    leaves = [inputs[n].clone().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(lambda *xs: delta_product_naive(**dict(zip(names, xs))), leaves)


@pytest.mark.parametrize("fn", [delta_product_naive, delta_product_parallel])
@pytest.mark.parametrize("n_h", [1, 2])
def test_beta_two_is_a_reflection(fn, n_h: int) -> None:
    """With beta = 2 and unit keys every step is an orthogonal reflection plus a shift, so the
    difference of two states run through the same tokens keeps its Frobenius norm; beta < 2 makes
    the map a strict contraction along the keys, so the same check fails there."""
    inputs = make_inputs(T=30, n_h=n_h, gate=False, beta_max=2.0)
    other = torch.randn(inputs["state"].shape, dtype=torch.float64)

    def drift(beta: torch.Tensor) -> torch.Tensor:
        _, s1 = fn(**{**inputs, "beta": beta})
        _, s2 = fn(**{**inputs, "beta": beta, "state": other})
        return (s1 - s2).flatten(2).norm(dim=-1)

    start = (inputs["state"] - other).flatten(2).norm(dim=-1)
    two = torch.full_like(inputs["beta"], 2.0)
    torch.testing.assert_close(drift(two), start, rtol=1e-10, atol=0.0)
    assert (drift(two - 0.2) < 0.99 * start).all()


def test_dispatch_backends_agree_and_keep_dtypes() -> None:
    inputs = make_inputs(T=20, n_h=2, gate=True, beta_max=2.0)
    bf16 = {n: x.to(torch.bfloat16) if n != "state" else x.float() for n, x in inputs.items()}
    o_ref, s_ref = delta_product(**inputs, backend="naive")
    o, s = delta_product(**bf16, backend="parallel")
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    assert_close(o, o_ref, 2e-2, "bf16 o")
    assert_close(s, s_ref, 2e-2, "bf16 state")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        o_ac, _ = delta_product(**{n: x.float() for n, x in inputs.items()}, backend="parallel")
    assert_close(o_ac, o_ref, 1e-5, "o under autocast")


def test_chunk_size_validation() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        delta_product_parallel(**make_inputs(T=4, n_h=1, gate=False, beta_max=1.0), chunk_size=0)


@pytest.mark.parametrize(("size", "piece"), [(64, 64), (128, 128), (256, 128), (96, 32), (48, 16), (40, 40)])
def test_kernel_head_piece(size: int, piece: int) -> None:
    """The V pieces the dispatch hands the kernel: the largest power of two in [16, 128] dividing
    head_v_dim (40 has none: the kernel's own check refuses it)."""
    assert head_piece(size) == piece
