"""Which calls the RWKV-7 CUDA backward takes, and what happens when it cannot be built (the
kernel itself is checked against float64 in tests/gpu/test_kernels_gpu.py)."""

from __future__ import annotations

import pytest
import torch

from skein.rwkv.ops.rwkv7 import bwd_cuda
from skein.rwkv.ops.rwkv7.chunk import Rwkv7Launch


def _inputs(K: int = 64, V: int = 64, dtype: torch.dtype = torch.bfloat16) -> tuple[tuple, torch.Tensor]:
    kin = tuple(torch.randn(2, 40, 3, K).to(dtype) for _ in range(5))
    return kin, torch.randn(2, 40, 3, V).to(dtype)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"K": 128, "V": 128}, "head sizes K = 128, V = 128"),
        ({"K": 64, "V": 32}, "head sizes K = 64, V = 32"),
        ({"chunk": 32}, "chunk = 32"),
        ({"block_v": 32}, "V-split"),
        ({"two_pass": True}, "two-pass"),
        ({"dtype": torch.float16}, "inputs in float16"),
        ({"mixed": True}, "inputs in bfloat16, float32"),
        ({}, "not on a CUDA device"),
    ],
)
def test_unsupported_names_the_reason(change: dict, reason: str) -> None:
    kin, v = _inputs(change.get("K", 64), change.get("V", 64), change.get("dtype", torch.bfloat16))
    if change.get("mixed"):
        kin = (kin[0], kin[1].float(), *kin[2:])
    why = bwd_cuda.unsupported(
        kin, v, change.get("chunk", 16), change.get("block_v", 0), change.get("two_pass", False)
    )
    assert why is not None and reason in why


def test_launch_checks_the_backward_choice() -> None:
    Rwkv7Launch(bwd_kernel="cuda", cuda_config=2).check(64)
    with pytest.raises(ValueError, match="bwd_kernel = 'fast'"):
        Rwkv7Launch(bwd_kernel="fast").check(64)
    with pytest.raises(ValueError, match="cuda_config = 2 must be one of"):
        Rwkv7Launch(cuda_config=2).check(32)


def test_failed_build_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bwd_cuda, "_build", lambda: OSError("line one\nnvcc: command not found"))
    with pytest.raises(RuntimeError, match=r"OSError: nvcc: command not found.*bwd_kernel='triton'"):
        bwd_cuda.load()
