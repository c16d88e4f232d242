"""The one comparison every numerical test uses."""

from __future__ import annotations

import torch
from torch import Tensor

from skein.rwkv.ops.common.accuracy import rel_rms


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """RMS of the difference over RMS of the expected tensor (fla's error ratio), as the kernel
    benchmarks measure it (inf where `actual` is not finite)."""
    return rel_rms(actual, expected)


def assert_close(actual: Tensor, expected: Tensor, tol: float, name: str = "tensor") -> None:
    """Fail when the relative RMS error exceeds tol, or when anything is not finite."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    err = rel_err(actual, expected)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"
