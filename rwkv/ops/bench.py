"""Kernel benchmarks: a registry of cases (name -> op, input builder, fwd and fwd+bwd runners) and
bench_kernels(), which times them on one CUDA device next to peer kernels where those load.

Peers: flash-linear-attention (fla 0.6.0 signatures) chunk_rwkv7, fused_recurrent_rwkv4,
chunk_gated_delta_product and chunk_gated_delta_rule on the interleaved n_h * T sequence; RWKV-LM's
rwkv7_clampw_v3 CUDA kernel and its _alt variant, and wind_rwkv's chunked CUDA kernel, each
built from a directory the user gives (their sources are not part of skein; rwkv7/peers.py);
torch SDPA flash attention (causal) at the same shape. A peer that is missing or refuses the
shape is listed with the reason instead of a time.

Every RWKV-7 kernel runs on the same inputs and is checked, beside its time, against the float64
token loop on a slice of them (batch 0, 4 heads, all of T): the largest relative RMS error of its
output and of every input gradient, so no speed is bought with precision unseen.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from skein.rwkv.ops.common.accuracy import Accuracy, Float64Check


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


def _leaf(x: Tensor, dtype: torch.dtype) -> Tensor:
    return x.to(dtype).contiguous().requires_grad_()


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
    return [_leaf(x, s.dtype) for x in (r, w, k * s.K**-0.5, v, a, b)]


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
    runner = autograd_runner(lambda: run(**inputs), list(inputs.values()))
    return Runner(runner.fwd, runner.fwd_bwd, runner.floor_fwd, runner.floor_fwd_bwd, lambda: check(run))


def _skein_rwkv7(s: BenchShape, bwd_kernel: str = "triton") -> Runner:
    from skein.rwkv.ops.rwkv7.chunk import Rwkv7Launch, chunk_rwkv7

    launch = Rwkv7Launch(bwd_kernel=bwd_kernel)
    x = dict(zip(RWKV7_NAMES, rwkv7_bench_inputs(s), strict=True))
    return rwkv7_runner(x, lambda **kw: [chunk_rwkv7(**kw, launch=launch)[0]])


def _skein_rwkv7_cuda_bwd(s: BenchShape) -> Runner:
    return _skein_rwkv7(s, "cuda")


def _fla_rwkv7(s: BenchShape) -> Runner:
    from fla.ops.rwkv7 import chunk_rwkv7

    x = dict(zip(RWKV7_NAMES, rwkv7_bench_inputs(s), strict=True))
    return rwkv7_runner(x, lambda **kw: [chunk_rwkv7(**kw, scale=1.0)[0]])


def rwkv_lm_cuda_case(directory: str, variant: str = "v3") -> Callable[[BenchShape], Runner]:
    """RWKV-LM's rwkv7_clampw_v3 ("v3") or its _alt variant ("alt"): bf16, chunk 16, no state in
    or out; built with torch.utils.cpp_extension from `directory` (RWKV-v7/train_temp/cuda)."""

    def build(s: BenchShape) -> Runner:
        from skein.rwkv.ops.rwkv7.peers import rwkv_lm_peer

        peer = rwkv_lm_peer(directory, dict(zip(RWKV7_NAMES, rwkv7_bench_inputs(s), strict=True)), variant)
        return rwkv7_runner(peer.inputs, peer.run, peer.to_skein_w)

    return build


def wind_rwkv_case(repo: str) -> Callable[[BenchShape], Runner]:
    """wind_rwkv's chunked CUDA kernel (bf16 tensor-core tiles, chunk 16, state in and out) from
    a checkout at `repo`, built on first use."""

    def build(s: BenchShape) -> Runner:
        from skein.rwkv.ops.rwkv7.peers import wind_rwkv_peer

        peer = wind_rwkv_peer(repo, dict(zip(RWKV7_NAMES, rwkv7_bench_inputs(s), strict=True)))
        return rwkv7_runner(peer.inputs, peer.run, peer.to_skein_w)

    return build


def wkv4_bench_inputs(s: BenchShape) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    C = s.H * s.K
    w = -torch.exp(torch.linspace(-6.0, 1.0, C, device=s.device))
    u = torch.randn(C, device=s.device)
    k, v = torch.randn(s.B, s.T, C, device=s.device), torch.randn(s.B, s.T, C, device=s.device)
    return tuple(_leaf(x, torch.float32) for x in (w, u, k, v))


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


def delta_product_bench_inputs(s: BenchShape) -> list[Tensor]:
    dev, n = s.device, s.n_h
    q = torch.randn(s.B, s.T, s.H, s.K, device=dev)
    k = F.normalize(torch.randn(s.B, s.T, n, s.H, s.K, device=dev), dim=-1)
    v = torch.randn(s.B, s.T, n, s.H, s.K, device=dev)
    beta = torch.sigmoid(torch.randn(s.B, s.T, n, s.H, device=dev))
    g = F.logsigmoid(torch.randn(s.B, s.T, s.H, device=dev) + 3)
    return [_leaf(x, s.dtype) for x in (q, k, v, beta, g)]


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
        _leaf(t.reshape(s.B, L, *t.shape[3:]), t.dtype)
        for t in (qs, k.detach(), v.detach(), beta.detach(), gs)
    ]

    def fn() -> tuple[Tensor, ...]:
        o, _ = chunk_gated_delta_rule(x[0], x[1], x[2], g=x[4], beta=x[3], scale=s.K**-0.5)
        return (o,)

    return autograd_runner(fn, x)


def _sdpa_flash(s: BenchShape) -> Runner:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (_leaf(torch.randn(s.B, s.H, s.T, s.K, device=s.device), s.dtype) for _ in range(3))

    def fn() -> tuple[Tensor, ...]:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return (F.scaled_dot_product_attention(q, k, v, is_causal=True),)

    return autograd_runner(fn, [q, k, v])


REGISTRY: dict[str, BenchCase] = {
    c.name: c
    for c in (
        BenchCase("skein chunk_rwkv7", "rwkv7", _skein_rwkv7),
        BenchCase("skein chunk_rwkv7, CUDA backward", "rwkv7", _skein_rwkv7_cuda_bwd),
        BenchCase("fla chunk_rwkv7", "rwkv7", _fla_rwkv7, peer=True),
        BenchCase("skein fused_wkv4 (fp32)", "wkv4", _skein_wkv4),
        BenchCase("fla fused_recurrent_rwkv4 (fp32)", "wkv4", _fla_wkv4, peer=True),
        BenchCase("skein chunk_delta_product", "delta_product", _skein_delta_product),
        BenchCase("fla chunk_gated_delta_product", "delta_product", _fla_delta_product, peer=True),
        BenchCase("fla chunk_gated_delta_rule (n_h*T)", "delta_product", _fla_gated_delta_rule, peer=True),
        BenchCase("torch SDPA flash (causal)", "attention", _sdpa_flash, peer=True),
    )
}


def _time_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median of `repeats` CUDA-event timings of fn()."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _row(case: BenchCase, shape: BenchShape, repeats: int) -> dict:
    row = {"name": case.name, "op": case.op, "status": "ok"}
    try:
        runner = case.build(shape)
        fwd_ms = _time_ms(runner.fwd, repeats)
        fwd_bwd_ms = _time_ms(runner.fwd_bwd, repeats)
    except Exception as e:  # a peer that is absent or refuses the shape is reported, not fatal
        row["status"] = f"refused: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        return row
    finally:
        torch.cuda.empty_cache()
    row.update(
        fwd_ms=fwd_ms,
        fwd_bwd_ms=fwd_bwd_ms,
        floor_fwd_mb=runner.floor_fwd / 1e6,
        floor_fwd_bwd_mb=runner.floor_fwd_bwd / 1e6,
        fwd_gbps=runner.floor_fwd / fwd_ms / 1e6,
        fwd_bwd_gbps=runner.floor_fwd_bwd / fwd_bwd_ms / 1e6,
    )
    if runner.accuracy is not None:
        try:
            acc = runner.accuracy()
            row.update(error=acc.error, error_of=acc.what, error_floor=acc.floor)
        except Exception as e:  # the timing stands; the check's failure is shown in its place
            row["error_of"] = f"check failed: {type(e).__name__}"
        finally:
            torch.cuda.empty_cache()
    return row


TABLE_HEAD = (
    f"{'kernel':36s} {'fwd ms':>8s} {'fwd+bwd ms':>11s} {'floor MB':>15s} {'fwd GB/s':>9s} {'f+b GB/s':>9s}"
    f"  {'err vs f64 (worst; floor)':>26s}"
)


def format_row(r: dict) -> str:
    """ms fwd, ms fwd+bwd, the floor (bytes of inputs and outputs once), the floor over the time
    (GB/s) and, where checked, the largest relative error against float64 with what it is in and
    the rounding floor of that tensor's dtype; the reason instead where the kernel refused."""
    if r["status"] != "ok":
        return f"{r['name']:36s} {r['status']}"
    if "error" in r:
        err = f"{r['error']:.1e} ({r['error_of']}; {r['error_floor']:.1e})"
    else:
        err = r.get("error_of", "-")
    return (
        f"{r['name']:36s} {r['fwd_ms']:8.3f} {r['fwd_bwd_ms']:11.3f} "
        f"{r['floor_fwd_mb']:7.0f}/{r['floor_fwd_bwd_mb']:<7.0f} {r['fwd_gbps']:9.0f} {r['fwd_bwd_gbps']:9.0f}"
        f"  {err:>26s}"
    )


def bench_kernels(
    B: int = 8,
    T: int = 4096,
    H: int = 32,
    K: int = 64,
    dtype: str = "bfloat16",
    repeats: int = 20,
    peers: bool = True,
    rwkv_lm_cuda: str | None = None,
    wind_rwkv: str | None = None,
    n_h: int = 2,
    ops: str = "rwkv7,wkv4,delta_product,attention",
) -> list[dict]:
    """Time skein's kernels (and peers) at one shape on the current CUDA device; print a table.

    Args:
        B: batch size.
        T: sequence length.
        H: heads.
        K: head size (K = V); wkv4 runs with C = H * K channels in fp32, as RWKV-4's kernel does.
        dtype: "bfloat16", "float16" or "float32" for rwkv7, delta_product and attention.
        repeats: timed runs per measurement (median reported) after 3 warm-up runs.
        peers: also time fla, torch SDPA and (with the paths below) RWKV-LM's and wind_rwkv's kernels.
        rwkv_lm_cuda: RWKV-LM's RWKV-v7/train_temp/cuda directory: its rwkv7_clampw_v3 and
            rwkv7_clampw_v3_for_h100_alt kernels are built there on first use and timed.
        wind_rwkv: a checkout of wind_rwkv (github.com/johanwind/wind_rwkv): its chunked CUDA
            RWKV-7 kernel is built on first use and timed.
        n_h: Householder steps per token for delta_product.
        ops: which ops to time, comma-separated (rwkv7, wkv4, delta_product, attention).
    Returns:
        One dict per kernel: name, op, status ("ok" or "refused: ..."), fwd_ms, fwd_bwd_ms,
        floor_fwd_mb, floor_fwd_bwd_mb, fwd_gbps, fwd_bwd_gbps; and for RWKV-7 kernels error,
        error_of, error_floor (the float64 check).
    Raises:
        BenchError: no CUDA device.
    """
    if not torch.cuda.is_available():
        raise BenchError(
            "bench kernels needs a CUDA device (the Triton kernels are GPU kernels); run it on a GPU machine"
        )
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype {dtype!r}: use bfloat16, float16 or float32")
    wanted = [o.strip() for o in ops.split(",") if o.strip()]
    known = sorted({c.op for c in REGISTRY.values()})
    if not wanted or any(o not in known for o in wanted):
        raise ValueError(f"ops {ops!r}: use a comma-separated subset of {','.join(known)}")
    shape = BenchShape(B, T, H, K, getattr(torch, dtype), n_h)
    cases = [c for c in REGISTRY.values() if peers or not c.peer]
    if peers:
        extra = []
        if rwkv_lm_cuda:
            extra += [
                BenchCase("RWKV-LM rwkv7_clampw_v3 (CUDA)", "rwkv7", rwkv_lm_cuda_case(rwkv_lm_cuda), True),
                BenchCase(
                    "RWKV-LM clampw_v3 alt (CUDA)", "rwkv7", rwkv_lm_cuda_case(rwkv_lm_cuda, "alt"), True
                ),
            ]
        if wind_rwkv:
            extra.append(BenchCase("wind_rwkv chunked_cuda", "rwkv7", wind_rwkv_case(wind_rwkv), True))
        cases[2:2] = extra
    cases = [c for c in cases if c.op in wanted]
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()}  B={B} T={T} H={H} K={K} {dtype} n_h={n_h}")
    print(TABLE_HEAD + "\n" + "-" * len(TABLE_HEAD), flush=True)
    rows = []
    for case in cases:  # each row as it is measured: first compiles of peers can take minutes
        rows.append(_row(case, shape, repeats))
        print(format_row(rows[-1]), flush=True)
    return rows


__all__ = [
    "REGISTRY",
    "BenchCase",
    "BenchError",
    "BenchShape",
    "Runner",
    "autograd_runner",
    "bench_kernels",
    "delta_product_bench_inputs",
    "format_row",
    "RWKV7_NAMES",
    "rwkv7_bench_inputs",
    "rwkv7_runner",
    "rwkv_lm_cuda_case",
    "wind_rwkv_case",
    "wkv4_bench_inputs",
]
