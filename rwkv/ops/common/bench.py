"""What an op's benchmark cases are made of: a shape, a runner (forward, forward + backward,
and the bytes each must move at least) and a named case; rwkv/ops/<op>/bench.py builds its
cases from these and rwkv/ops/bench.py times them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from skein.rwkv.ops.common.accuracy import Accuracy


class BenchError(RuntimeError):
    """The benchmark cannot run here (no CUDA device); the CLI prints it as one line."""


@dataclass(frozen=True)
class BenchShape:
    """One benchmark shape; wkv4 uses C = H * K channels, delta_product n_h steps per token."""

    B: int
    T: int
    H: int
    K: int
    dtype: torch.dtype
    n_h: int = 2
    device: str = "cuda"
    """Where the inputs are built (the timing itself needs CUDA)."""


@dataclass(frozen=True)
class Runner:
    """fwd() runs the forward; fwd_bwd() the forward and the backward for all inputs."""

    fwd: Callable[[], object]
    fwd_bwd: Callable[[], object]
    floor_fwd: int
    """Bytes of the forward's inputs and outputs, each read or written once."""
    floor_fwd_bwd: int
    """floor_fwd plus the output gradients read and the input gradients written once."""
    accuracy: Callable[[], Accuracy] | None = None
    """The error against the float64 reference, where the case has one."""


@dataclass(frozen=True)
class BenchCase:
    name: str
    op: str
    build: Callable[[BenchShape], Runner]
    peer: bool = False


def autograd_runner(fn: Callable[[], tuple[Tensor, ...]], inputs: list[Tensor]) -> Runner:
    """Runner for an autograd function of `inputs` whose outputs all get random gradients."""
    outs = fn()
    grads = [torch.randn_like(o) for o in outs]
    in_bytes = sum(x.numel() * x.element_size() for x in inputs)
    out_bytes = sum(o.numel() * o.element_size() for o in outs)

    def fwd_bwd() -> object:
        return torch.autograd.grad(fn(), inputs, grads)

    def fwd() -> object:
        with torch.no_grad():
            return fn()

    return Runner(fwd, fwd_bwd, in_bytes + out_bytes, 2 * (in_bytes + out_bytes))


def leaf(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x as a contiguous leaf of `dtype` that requires gradients."""
    return x.to(dtype).contiguous().requires_grad_()
