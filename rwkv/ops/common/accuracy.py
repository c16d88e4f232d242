"""A kernel's accuracy against a float64 reference: the relative RMS error of its outputs and of
the gradient of every input, for fixed random cotangents, on a slice of the inputs (rows and
heads of a sequence op do not depend on the others, so a slice of the batch and heads checks a
benchmark-shape run without the float64 loop over all of it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def rel_rms(got: Tensor, ref: Tensor) -> float:
    """||got - ref|| / ||ref|| in float64; inf when got holds a NaN or an infinity."""
    got, ref = got.double(), ref.double()
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@dataclass(frozen=True)
class Accuracy:
    error: float
    """The largest relative RMS error over the outputs and the input gradients."""
    what: str
    """Which: "out0", "out1", ... or "d<input name>"."""
    floor: float
    """The error of the exact value of `what` merely rounded to the kernel's dtype: no kernel
    with outputs in that dtype does better."""

    def __str__(self) -> str:
        return f"{self.error:.1e} ({self.what})"


class Float64Check:
    """Checks kernels against `reference(**float64 inputs) -> outputs`, a differentiable function
    (a token loop) of the same inputs in the same parametrization as the kernel's.

    `cut_in(name, tensor)` and `cut_out(i, tensor)` take the slice of an input (or its gradient)
    and of output i that the reference runs on. The cotangents are drawn once, from a fixed
    seed, on the first call; the reference runs once and is reused for every kernel checked.
    """

    def __init__(
        self,
        reference: Callable[..., list[Tensor]],
        inputs: dict[str, Tensor],
        cut_in: Callable[[str, Tensor], Tensor],
        cut_out: Callable[[int, Tensor], Tensor],
    ) -> None:
        self.reference, self.inputs, self.cut_in, self.cut_out = reference, inputs, cut_in, cut_out
        self.cotangents: list[Tensor] | None = None
        self.expected: dict[str, Tensor] = {}

    def _reference(self, outs: list[Tensor]) -> None:
        gen = torch.Generator(device=outs[0].device).manual_seed(1)
        self.cotangents = [torch.randn(o.shape, device=o.device, generator=gen) for o in outs]
        ref_in = {n: self.cut_in(n, t).detach().double().requires_grad_() for n, t in self.inputs.items()}
        ref_out = self.reference(**ref_in)
        cots = [self.cut_out(i, c).double() for i, c in enumerate(self.cotangents)]
        loss = sum((o * c).sum() for o, c in zip(ref_out, cots, strict=True))
        grads = torch.autograd.grad(loss, list(ref_in.values()), allow_unused=True)
        self.expected = {f"out{i}": o.detach() for i, o in enumerate(ref_out)}
        for n, g in zip(ref_in, grads, strict=True):
            self.expected[f"d{n}"] = torch.zeros_like(ref_in[n]) if g is None else g

    def __call__(self, kernel: Callable[..., list[Tensor]]) -> Accuracy:
        """Run `kernel(**inputs) -> outputs` (fresh leaves of the inputs), backpropagate the
        cotangents and return the worst relative error against the reference."""
        leaves = {n: t.detach().clone().requires_grad_() for n, t in self.inputs.items()}
        outs = kernel(**leaves)
        if self.cotangents is None:
            self._reference(outs)
        loss = sum((o.float() * c).sum() for o, c in zip(outs, self.cotangents, strict=True))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        got = {f"out{i}": self.cut_out(i, o) for i, o in enumerate(outs)}
        for n, g in zip(leaves, grads, strict=True):
            got[f"d{n}"] = self.cut_in(n, torch.zeros_like(leaves[n]) if g is None else g)
        errs = {name: rel_rms(t, self.expected[name]) for name, t in got.items()}
        worst = max(errs, key=errs.__getitem__)
        floor = rel_rms(self.expected[worst].to(got[worst].dtype), self.expected[worst])
        return Accuracy(errs[worst], worst, floor)


__all__ = ["Accuracy", "Float64Check", "rel_rms"]
