"""Benchmark cases of the DeltaProduct op: skein's chunked kernel, fla's chunk_gated_delta_product,
and fla's chunk_gated_delta_rule on the interleaved n_h * T sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from skein.rwkv.ops.common.bench import BenchCase, BenchShape, Runner, autograd_runner, leaf


def delta_product_bench_inputs(s: BenchShape) -> list[Tensor]:
    dev, n = s.device, s.n_h
    q = torch.randn(s.B, s.T, s.H, s.K, device=dev)
    k = F.normalize(torch.randn(s.B, s.T, n, s.H, s.K, device=dev), dim=-1)
    v = torch.randn(s.B, s.T, n, s.H, s.K, device=dev)
    beta = torch.sigmoid(torch.randn(s.B, s.T, n, s.H, device=dev))
    g = F.logsigmoid(torch.randn(s.B, s.T, s.H, device=dev) + 3)
    return [leaf(x, s.dtype) for x in (q, k, v, beta, g)]


def _skein_delta_product(s: BenchShape) -> Runner:
    from skein.rwkv.ops.delta_product.chunk import chunk_delta_product

    x = delta_product_bench_inputs(s)
    return autograd_runner(lambda: chunk_delta_product(*x)[:1], x)


def _fla_delta_product(s: BenchShape) -> Runner:
    from fla.ops.gated_delta_product import chunk_gated_delta_product

    q, k, v, beta, g = delta_product_bench_inputs(s)
    L = s.T * s.n_h  # fla interleaves the n_h steps of a token along time

    def fn() -> tuple[Tensor, ...]:
        o = chunk_gated_delta_product(
            q=q,
            k=k.reshape(s.B, L, s.H, s.K),
            v=v.reshape(s.B, L, s.H, s.K),
            g=g,
            beta=beta.reshape(s.B, L, s.H),
            num_householder=s.n_h,
            scale=s.K**-0.5,
        )
        return o[:1]

    return autograd_runner(fn, [q, k, v, beta, g])


def _fla_gated_delta_rule(s: BenchShape) -> Runner:
    """fla's chunk_gated_delta_rule on the sequence of n_h * T steps (each token's n_h Householder
    steps in a row, the gate on its first step): how fla builds DeltaProduct, and what runs on
    Hopper where fla's own DeltaProduct entry point refuses."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    q, k, v, beta, g = delta_product_bench_inputs(s)
    L, n = s.T * s.n_h, s.n_h
    qs = torch.zeros(s.B, s.T, n, s.H, s.K, device=s.device, dtype=q.dtype)
    qs[:, :, -1] = q.detach()
    gs = torch.zeros(s.B, s.T, n, s.H, device=s.device, dtype=g.dtype)
    gs[:, :, 0] = g.detach()
    x = [
        leaf(t.reshape(s.B, L, *t.shape[3:]), t.dtype)
        for t in (qs, k.detach(), v.detach(), beta.detach(), gs)
    ]

    def fn() -> tuple[Tensor, ...]:
        o, _ = chunk_gated_delta_rule(x[0], x[1], x[2], g=x[4], beta=x[3], scale=s.K**-0.5)
        return (o,)

    return autograd_runner(fn, x)


CASES = (
    BenchCase("skein chunk_delta_product", "delta_product", _skein_delta_product),
    BenchCase("fla chunk_gated_delta_product", "delta_product", _fla_delta_product, peer=True),
    BenchCase("fla chunk_gated_delta_rule (n_h*T)", "delta_product", _fla_gated_delta_rule, peer=True),
)
