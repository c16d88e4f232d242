"""Acceptance check of the Triton kernels on a CUDA device, against the float64 token loops.

For each op, bf16 and fp32 inputs at realistic shapes (T not a multiple of the chunk, T = 1,
B = 1, H = 1): outputs, final state and the gradient of every input (initial state included)
within 1e-2 (bf16) / 1e-4 (fp32) relative RMS error, nothing non-finite, and four segments with
the state carried equal to one pass. Run: python -m pytest -q tests/gpu
"""

from __future__ import annotations

import os

import pytest
import torch

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

pytest.importorskip("triton")

from skein.rwkv.ops.rwkv7.bwd_cuda import CONFIGS  # noqa: E402
from tests.ops.triton_cases import BF16_DOTS_TOL, DELTA_PRODUCT_VARIANTS, RWKV7_VARIANTS  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1",
        reason="TRITON_INTERPRET=1 would run the kernels in the CPU interpreter; unset it for the GPU check",
    ),
]

DTYPES = {"bf16": (torch.bfloat16, BF16_TOL), "fp32": (torch.float32, FP32_TOL)}

# (B, T, H, K, V); chunks are 16 tokens by default
RWKV7_SHAPES = [(2, 1000, 4, 64, 64), (1, 1, 1, 64, 64), (1, 257, 1, 128, 128), (3, 100, 2, 32, 64)]
# (B, T, H, K = V) for the CUDA backward: T below, at and across its 8- and 16-token boundaries
RWKV7_CUDA_SHAPES = [
    (2, 1000, 4, 64),
    (1, 1, 1, 64),
    (1, 7, 2, 64),
    (1, 9, 1, 64),
    (2, 16, 2, 64),
    (2, 37, 3, 32),
]
# (B, T, C)
WKV4_SHAPES = [(2, 1000, 512), (1, 1, 64), (1, 333, 100)]
# (B, T, n_h, H, K, V, gated)
DELTA_PRODUCT_SHAPES = [
    (2, 500, 2, 4, 64, 64, True),
    (1, 1, 1, 1, 64, 64, True),
    (2, 333, 1, 2, 64, 64, True),
    (1, 301, 3, 2, 128, 128, False),
]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", RWKV7_SHAPES, ids=str)
def test_rwkv7(shape: tuple[int, ...], dtype: str) -> None:
    torch_dtype, tol = DTYPES[dtype]
    inputs = cast(rwkv7_inputs(*shape, seed=sum(shape), device="cuda"), torch_dtype, keep=("state",))
    check_vs_reference(*rwkv7_pair(), inputs, tol)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", RWKV7_CUDA_SHAPES, ids=str)
def test_rwkv7_cuda_backward(shape: tuple[int, ...], dtype: str) -> None:
    B, T, H, N = shape
    torch_dtype, tol = DTYPES[dtype]
    inputs = cast(rwkv7_inputs(B, T, H, N, N, seed=T, device="cuda"), torch_dtype, keep=("state",))
    check_vs_reference(*rwkv7_pair(bwd_kernel="cuda"), inputs, tol)


@pytest.mark.parametrize("config", CONFIGS[64])
@pytest.mark.parametrize("decay", ["model", "slow", "fast"])
def test_rwkv7_cuda_backward_configs_and_decays(decay: str, config: int) -> None:
    """Every launch configuration; "fast" decays (w in [-6, -2]) take the path that recomputes a
    row forward instead of undoing steps."""
    inputs = rwkv7_inputs(2, 300, 2, 64, 64, decay, seed=config, device="cuda")
    check_vs_reference(*rwkv7_pair(bwd_kernel="cuda", cuda_config=config), inputs, FP32_TOL)


def test_rwkv7_cuda_backward_is_what_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from skein.rwkv.ops.rwkv7 import bwd_cuda
    from skein.rwkv.ops.rwkv7.chunk import Rwkv7Launch, chunk_rwkv7

    calls = []
    real = bwd_cuda.rwkv7_bwd_cuda
    monkeypatch.setattr(bwd_cuda, "rwkv7_bwd_cuda", lambda *a: calls.append(1) or real(*a))
    x = cast(rwkv7_inputs(1, 40, 2, 64, 64, seed=3, device="cuda"), torch.bfloat16, keep=("state",))
    leaves = [x[n].requires_grad_() for n in (*"rwkvab", "state")]
    o, sT = chunk_rwkv7(*leaves, launch=Rwkv7Launch(bwd_kernel="cuda"))
    (o.float().square().sum() + sT.sum()).backward()
    assert calls == [1]


@pytest.mark.parametrize("decay", ["slow", "fast"])
def test_rwkv7_decay_extremes(decay: str) -> None:
    check_vs_reference(*rwkv7_pair(), rwkv7_inputs(2, 500, 2, 64, 64, decay, device="cuda"), FP32_TOL)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", WKV4_SHAPES, ids=str)
def test_wkv4(shape: tuple[int, ...], dtype: str) -> None:
    torch_dtype, tol = DTYPES[dtype]
    inputs = wkv4_leaves(wkv4_inputs(*shape, seed=sum(shape), device="cuda"))
    inputs["k"], inputs["v"] = inputs["k"].to(torch_dtype), inputs["v"].to(torch_dtype)
    kernel, reference = wkv4_pair()
    check_vs_reference(split_state(kernel), split_state(reference), inputs, tol)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", DELTA_PRODUCT_SHAPES, ids=str)
def test_delta_product(shape: tuple, dtype: str) -> None:
    torch_dtype, tol = DTYPES[dtype]
    inputs = delta_product_inputs(*shape, seed=sum(shape), device="cuda")
    check_vs_reference(*delta_product_pair(), cast(inputs, torch_dtype, keep=("state",)), tol)


@pytest.mark.parametrize("V", [256, 96])
def test_delta_product_dispatch_splits_value_heads(V: int) -> None:
    """head_v_dim 256 (the shipped DeltaProduct configs) and 96 run through the dispatch as kernel
    pieces of 128 and 32 columns, against float64."""
    from skein.rwkv.ops.delta_product import delta_product

    def kernel(q, k, v, beta, g, state):
        return delta_product(q, k, v, beta, g, state, 0.3, backend="triton")

    _, reference = delta_product_pair()
    inputs = delta_product_inputs(2, 300, 2, 2, 128, V, True, seed=V, device="cuda")
    check_vs_reference(kernel, reference, cast(inputs, torch.bfloat16, keep=("state",)), BF16_TOL)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("variant", list(RWKV7_VARIANTS))
def test_rwkv7_launch_variants(variant: str, dtype: str) -> None:
    """Each launch variant (chunk size, V-split backward and its reduction) at a realistic shape."""
    torch_dtype, tol = DTYPES[dtype]
    inputs = cast(rwkv7_inputs(2, 1000, 4, 64, 64, seed=7, device="cuda"), torch_dtype, keep=("state",))
    check_vs_reference(*rwkv7_pair(**RWKV7_VARIANTS[variant]), inputs, tol)


@pytest.mark.parametrize("shape", [(2, 1000, 4, 64, 64), (1, 37, 2, 32, 64)], ids=str)
def test_rwkv7_bf16_dots(shape: tuple[int, ...]) -> None:
    """Rwkv7Launch(dots="bf16"): bf16 tensor-core products on the GPU (the CPU checks only their
    exact fp32 form), within the bound its CPU check sets."""
    inputs = cast(rwkv7_inputs(*shape, seed=11, device="cuda"), torch.bfloat16, keep=("state",))
    check_vs_reference(*rwkv7_pair(dots="bf16"), inputs, BF16_DOTS_TOL)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("variant", list(DELTA_PRODUCT_VARIANTS))
def test_delta_product_launch_variants(variant: str, dtype: str) -> None:
    torch_dtype, tol = DTYPES[dtype]
    inputs = delta_product_inputs(2, 500, 2, 4, 64, 64, True, seed=8, device="cuda")
    check_vs_reference(
        *delta_product_pair(**DELTA_PRODUCT_VARIANTS[variant]),
        cast(inputs, torch_dtype, keep=("state",)),
        tol,
    )


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("time_split", [4, 37])
def test_wkv4_time_split(time_split: int, dtype: str) -> None:
    """The three-pass forward and backward over time segments (37 does not divide the 125 time
    tiles)."""
    torch_dtype, tol = DTYPES[dtype]
    inputs = wkv4_leaves(wkv4_inputs(2, 1000, 512, seed=9, device="cuda"))
    inputs["k"], inputs["v"] = inputs["k"].to(torch_dtype), inputs["v"].to(torch_dtype)
    kernel, reference = wkv4_pair(time_split=time_split)
    check_vs_reference(split_state(kernel), split_state(reference), inputs, tol)


def test_segments() -> None:
    """Four segments with the state carried == one pass, for each op (fp32, T not a multiple
    of the chunk and cuts inside chunks)."""
    kernel, _ = rwkv7_pair()
    check_segments(
        kernel,
        rwkv7_inputs(2, 1001, 4, 64, 64, device="cuda"),
        dict.fromkeys("rwkvab", 1),
        "state",
        tol=FP32_TOL,
    )
    kernel, _ = delta_product_pair()
    inputs = delta_product_inputs(2, 501, 2, 4, 64, 64, True, device="cuda")
    check_segments(kernel, inputs, dict.fromkeys(("q", "k", "v", "beta", "g"), 1), "state", tol=FP32_TOL)
    kernel, _ = wkv4_pair()
    check_segments(kernel, wkv4_inputs(2, 1001, 512, device="cuda"), {"k": 1, "v": 1}, "state", tol=FP32_TOL)
