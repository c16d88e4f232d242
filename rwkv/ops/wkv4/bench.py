"""Benchmark cases of the RWKV-4 WKV op: skein's fused kernel and fla's fused_recurrent_rwkv4, in fp32."""

from __future__ import annotations

import torch
from torch import Tensor

from skein.rwkv.ops.common.bench import BenchCase, BenchShape, Runner, autograd_runner, leaf


def wkv4_bench_inputs(s: BenchShape) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    C = s.H * s.K
    w = -torch.exp(torch.linspace(-6.0, 1.0, C, device=s.device))
    u = torch.randn(C, device=s.device)
    k, v = torch.randn(s.B, s.T, C, device=s.device), torch.randn(s.B, s.T, C, device=s.device)
    return tuple(leaf(x, torch.float32) for x in (w, u, k, v))


def _skein_wkv4(s: BenchShape) -> Runner:
    from skein.rwkv.ops.wkv4.fused import fused_wkv4

    x = list(wkv4_bench_inputs(s))
    return autograd_runner(lambda: fused_wkv4(*x)[:1], x)


def _fla_wkv4(s: BenchShape) -> Runner:
    from fla.ops.rwkv4 import fused_recurrent_rwkv4

    w, u, k, v = wkv4_bench_inputs(s)
    time_decay = torch.log(-w.detach()).requires_grad_()  # fla applies w = -exp(time_decay) itself
    state = torch.zeros(s.B, 3, 1, s.H * s.K, device=s.device)
    state[:, 2] = -1e38
    x = [time_decay, u, k, v]
    return autograd_runner(lambda: fused_recurrent_rwkv4(*x, state)[:1], x)


CASES = (
    BenchCase("skein fused_wkv4 (fp32)", "wkv4", _skein_wkv4),
    BenchCase("fla fused_recurrent_rwkv4 (fp32)", "wkv4", _fla_wkv4, peer=True),
)
