"""Benchmark cases of the RWKV-7 op: skein's chunked kernel (Triton and CUDA backward), fla's
chunk_rwkv7, and the peers built from directories the user gives (rwkv7/peers.py: RWKV-LM's
rwkv7_clampw_v3 and its alt, wind_rwkv's chunked CUDA kernel). Every case runs on the same inputs
and carries its float64 check: batch 0 and the first 4 heads through the token loop, in the
kernel's own decay parametrization."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from skein.rwkv.ops.common.accuracy import Float64Check
from skein.rwkv.ops.common.bench import BenchCase, BenchShape, Runner, autograd_runner, leaf

RWKV7_NAMES = ("r", "w", "k", "v", "a", "b")


def rwkv7_bench_inputs(s: BenchShape, seed: int = 0) -> list[Tensor]:
    """r, w, k, v, a, b like an RWKV-7 layer's: w = -exp(-softplus(-x) - 0.5), a = -kk, b = kk * iclr.
    The same `seed` gives the same inputs, so every kernel of a shape runs on one set."""
    shape, dev = (s.B, s.T, s.H, s.K), s.device
    gen = torch.Generator(device=dev).manual_seed(seed)

    def randn() -> Tensor:
        return torch.randn(shape, device=dev, generator=gen)

    kk = F.normalize(randn(), dim=-1)
    w = -torch.exp(-F.softplus(-randn()) - 0.5)
    r, k, v = randn(), randn(), randn()
    a, b = -kk, kk * torch.sigmoid(randn())
    return [leaf(x, s.dtype) for x in (r, w, k * s.K**-0.5, v, a, b)]


def _named_inputs(s: BenchShape) -> dict[str, Tensor]:
    return dict(zip(RWKV7_NAMES, rwkv7_bench_inputs(s), strict=True))


def rwkv7_runner(
    inputs: dict[str, Tensor],
    run: Callable[..., list[Tensor]],
    to_skein_w: Callable[[Tensor], Tensor] = lambda w: w,
) -> Runner:
    """Runner of an RWKV-7 kernel `run(r=, w=, k=, v=, a=, b=) -> [o]` on `inputs` (skein's, or a
    peer's whose w maps to skein's log decay by `to_skein_w`), with its float64 check on batch 0
    and the first 4 heads."""
    from skein.rwkv.ops.rwkv7.naive import rwkv7_naive

    def reference(r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor) -> list[Tensor]:
        return [rwkv7_naive(r, to_skein_w(w), k, v, a, b)[0]]

    def cut(_: object, t: Tensor) -> Tensor:
        return t[:1, :, :4]

    check = Float64Check(reference, inputs, cut, cut)
    return replace(autograd_runner(lambda: run(**inputs), list(inputs.values())), accuracy=lambda: check(run))


def _skein_rwkv7(s: BenchShape, bwd_kernel: str = "triton", dots: str = "auto") -> Runner:
    from skein.rwkv.ops.rwkv7.chunk import Rwkv7Launch, chunk_rwkv7

    launch = Rwkv7Launch(bwd_kernel=bwd_kernel, dots=dots)
    return rwkv7_runner(_named_inputs(s), lambda **kw: [chunk_rwkv7(**kw, launch=launch)[0]])


def _skein_rwkv7_cuda_bwd(s: BenchShape) -> Runner:
    return _skein_rwkv7(s, "cuda")


def _skein_rwkv7_bf16_dots(s: BenchShape) -> Runner:
    return _skein_rwkv7(s, dots="bf16")


def _fla_rwkv7(s: BenchShape) -> Runner:
    from fla.ops.rwkv7 import chunk_rwkv7

    return rwkv7_runner(_named_inputs(s), lambda **kw: [chunk_rwkv7(**kw, scale=1.0)[0]])


def rwkv_lm_cuda_case(directory: str, variant: str = "v3") -> Callable[[BenchShape], Runner]:
    """RWKV-LM's rwkv7_clampw_v3 ("v3") or its _alt variant ("alt"): bf16, chunk 16, no state in
    or out; built with torch.utils.cpp_extension from `directory` (RWKV-v7/train_temp/cuda)."""

    def build(s: BenchShape) -> Runner:
        from skein.rwkv.ops.rwkv7.peers import rwkv_lm_peer

        peer = rwkv_lm_peer(directory, _named_inputs(s), variant)
        return rwkv7_runner(peer.inputs, peer.run, peer.to_skein_w)

    return build


def wind_rwkv_case(repo: str) -> Callable[[BenchShape], Runner]:
    """wind_rwkv's chunked CUDA kernel (bf16 tensor-core tiles, chunk 16, state in and out) from
    a checkout at `repo`, built on first use."""

    def build(s: BenchShape) -> Runner:
        from skein.rwkv.ops.rwkv7.peers import wind_rwkv_peer

        peer = wind_rwkv_peer(repo, _named_inputs(s))
        return rwkv7_runner(peer.inputs, peer.run, peer.to_skein_w)

    return build


def peer_cases(rwkv_lm_cuda: str | None, wind_rwkv: str | None) -> list[BenchCase]:
    """The cases of the peers whose directories are given."""
    cases = []
    if rwkv_lm_cuda:
        cases += [
            BenchCase("RWKV-LM rwkv7_clampw_v3 (CUDA)", "rwkv7", rwkv_lm_cuda_case(rwkv_lm_cuda), True),
            BenchCase("RWKV-LM clampw_v3 alt (CUDA)", "rwkv7", rwkv_lm_cuda_case(rwkv_lm_cuda, "alt"), True),
        ]
    if wind_rwkv:
        cases.append(BenchCase("wind_rwkv chunked_cuda", "rwkv7", wind_rwkv_case(wind_rwkv), True))
    return cases


CASES = (
    BenchCase("skein chunk_rwkv7", "rwkv7", _skein_rwkv7),
    BenchCase("skein chunk_rwkv7, CUDA backward", "rwkv7", _skein_rwkv7_cuda_bwd),
    BenchCase("skein chunk_rwkv7, bf16 tile products", "rwkv7", _skein_rwkv7_bf16_dots),
    BenchCase("fla chunk_rwkv7", "rwkv7", _fla_rwkv7, peer=True),
)
