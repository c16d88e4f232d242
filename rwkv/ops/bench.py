"""Kernel benchmarks: a registry of cases (name -> op, input builder, fwd and fwd+bwd runners) and
bench_kernels(), which times them on one CUDA device next to peer kernels where those load. Each op
registers its own cases in rwkv/ops/<op>/bench.py (`CASES`); OPS lists those modules.

Peers: flash-linear-attention (fla 0.6.0 signatures) chunk_rwkv7, fused_recurrent_rwkv4,
chunk_gated_delta_product and chunk_gated_delta_rule on the interleaved n_h * T sequence; RWKV-LM's
rwkv7_clampw_v3 CUDA kernel and its _alt variant, and wind_rwkv's chunked CUDA kernel, each
built from a directory the user gives (their sources are not part of skein; rwkv7/peers.py);
torch SDPA flash attention (causal) at the same shape. A peer that is missing or refuses the
shape is listed with the reason instead of a time. Every RWKV-7 kernel runs on the same inputs and
is checked, beside its time, against the float64 token loop (rwkv7/bench.py), so no speed is
bought with precision unseen.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from skein.rwkv.ops.common.bench import BenchCase, BenchError, BenchShape, Runner, autograd_runner, leaf
from skein.rwkv.ops.delta_product.bench import delta_product_bench_inputs
from skein.rwkv.ops.rwkv7.bench import peer_cases, rwkv7_bench_inputs, rwkv_lm_cuda_case
from skein.rwkv.ops.wkv4.bench import wkv4_bench_inputs

OPS = ("skein.rwkv.ops.rwkv7.bench", "skein.rwkv.ops.wkv4.bench", "skein.rwkv.ops.delta_product.bench")
"""The modules whose `CASES` make up the registry, in table order; a new op adds its own."""


def _sdpa_flash(s: BenchShape) -> Runner:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (leaf(torch.randn(s.B, s.H, s.T, s.K, device=s.device), s.dtype) for _ in range(3))

    def fn() -> tuple[Tensor, ...]:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return (F.scaled_dot_product_attention(q, k, v, is_causal=True),)

    return autograd_runner(fn, [q, k, v])


REGISTRY: dict[str, BenchCase] = {
    c.name: c
    for c in (
        *(case for module in OPS for case in importlib.import_module(module).CASES),
        BenchCase("torch SDPA flash (causal)", "attention", _sdpa_flash, peer=True),
    )
}
"""Case name -> case: every op's cases, then torch's flash attention as the transformer's reference."""


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
        end_of_rwkv7 = max(i for i, c in enumerate(cases) if c.op == "rwkv7") + 1
        cases[end_of_rwkv7:end_of_rwkv7] = peer_cases(rwkv_lm_cuda, wind_rwkv)
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
    "OPS",
    "REGISTRY",
    "BenchCase",
    "BenchError",
    "BenchShape",
    "Runner",
    "autograd_runner",
    "bench_kernels",
    "delta_product_bench_inputs",
    "format_row",
    "rwkv7_bench_inputs",
    "rwkv_lm_cuda_case",
    "wkv4_bench_inputs",
]
