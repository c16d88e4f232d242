"""Sweep the launch variants of skein's Triton kernels on one CUDA GPU: for each variant, the
largest relative RMS error against a float64 reference (outputs, final state and every input
gradient, the initial state's included), the forward and forward+backward median times
(triton.testing.do_bench) and the bandwidth over the memory floor; peers (RWKV-LM's CUDA
rwkv7_clampw_v3, fla) beside them. Rows print as they complete; one table prints last.

    python scripts/gpu_kernel_sweep.py [--rwkv_lm /path/to/RWKV-LM] [--ops rwkv7,delta_product,wkv4]

Each variant is a separate Triton compile (tens of seconds the first time); --ops splits the
sweep over several calls, and Triton's cache makes a repeated call fast.

The reference runs the float64 token loop (naive.py of each op) on GPU over the full length T,
on a slice of the batch (B = 1) and of the heads (4) or channels (256) of the benchmark-shape
run; those rows and columns of the kernel's outputs and gradients do not depend on the others.
The RWKV-4 slice keeps all B, since dw and du sum over the batch.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from skein.rwkv.ops.bench import (
    REGISTRY,
    BenchShape,
    Runner,
    autograd_runner,
    delta_product_bench_inputs,
    rwkv7_bench_inputs,
    rwkv_lm_cuda_case,
    wkv4_bench_inputs,
)
from skein.rwkv.ops.common.accuracy import Float64Check
from skein.rwkv.ops.delta_product.chunk import DeltaProductLaunch, chunk_delta_product
from skein.rwkv.ops.delta_product.naive import delta_product_naive
from skein.rwkv.ops.rwkv7.bwd_cuda import CONFIGS as CUDA_CONFIGS
from skein.rwkv.ops.rwkv7.chunk import Rwkv7Launch, chunk_rwkv7
from skein.rwkv.ops.rwkv7.naive import rwkv7_naive
from skein.rwkv.ops.wkv4.fused import fused_wkv4
from skein.rwkv.ops.wkv4.naive import wkv4_naive

RWKV7_VARIANTS = {
    **{
        f"c16 cuda bwd c{c}": Rwkv7Launch(chunk=16, bwd_kernel="cuda", cuda_config=c)
        for c in CUDA_CONFIGS[64]
    },
    "c16 bwd per head": Rwkv7Launch(chunk=16, bwd_kernel="triton"),
    "c16 bf16 dots": Rwkv7Launch(chunk=16, dots="bf16"),
    "c16 bf16 dots bwd_bv32 sum": Rwkv7Launch(chunk=16, dots="bf16", bwd_block_v=32),
    "c16 bf16 dots two-pass bwd_bv32 sum": Rwkv7Launch(
        chunk=16, dots="bf16", bwd_block_v=32, bwd_two_pass=True
    ),
    "c16 bwd 16 warps": Rwkv7Launch(chunk=16, bwd_warps=16),
    "c16 bwd 4 warps": Rwkv7Launch(chunk=16, bwd_warps=4),
    "c16 bwd 1 stage": Rwkv7Launch(chunk=16, bwd_stages=1),
    "c16 two-pass bwd_bv32 sum": Rwkv7Launch(chunk=16, bwd_block_v=32, bwd_two_pass=True),
    "c16 fwd_w8 two-pass bwd_bv32 atomic": Rwkv7Launch(
        chunk=16, fwd_warps=8, bwd_block_v=32, bwd_reduce="atomic", bwd_two_pass=True
    ),
    "c16 two-pass": Rwkv7Launch(chunk=16, bwd_two_pass=True),
    "c16 bwd_bv32 sum": Rwkv7Launch(chunk=16, bwd_block_v=32),
    "c16 bwd_bv32 atomic": Rwkv7Launch(chunk=16, bwd_block_v=32, bwd_reduce="atomic"),
    "c16 fwd_bv32 (old fwd) bwd per head": Rwkv7Launch(chunk=16, block_v=32, bwd_kernel="triton"),
    "c32 two-pass bwd_bv32 sum": Rwkv7Launch(chunk=32, bwd_block_v=32, bwd_two_pass=True),
    "c32 bwd_bv32 sum": Rwkv7Launch(chunk=32, bwd_block_v=32),
    "c64 bwd_bv32 sum": Rwkv7Launch(chunk=64, bwd_block_v=32),
}
"""Forward: V in one program (64 columns) unless fwd_bv says otherwise. "cuda bwd cN": the CUDA
backward in launch configuration N (bwd_cuda.CONFIGS)."""
DELTA_PRODUCT_VARIANTS = {
    "c16 bwd per head": DeltaProductLaunch(chunk=16),
    "c16 two-pass bwd_bv32 sum": DeltaProductLaunch(chunk=16, bwd_block_v=32, bwd_two_pass=True),
    "c16 bwd_bv32 sum": DeltaProductLaunch(chunk=16, bwd_block_v=32),
    "c16 two-pass": DeltaProductLaunch(chunk=16, bwd_two_pass=True),
    "c32 two-pass bwd_bv32 sum": DeltaProductLaunch(chunk=32, bwd_block_v=32, bwd_two_pass=True),
}
WKV4_VARIANTS = {
    "block_c 32": (32, 1),
    "block_c 32 time_split 8": (32, 8),
    "block_c 32 time_split 32": (32, 32),
    "block_c 16": (16, 1),
}
"""(channels per program, forward time segments)."""
BF16_BUDGET, FP32_BUDGET = 3e-3, 2e-6
"""Relative RMS error budgets against float64 (bf16 inputs / fp32 inputs). A row is flagged
when its error exceeds both the budget and 1.5x the rounding floor of its output dtype."""


@dataclass
class Row:
    op: str
    shape: str
    name: str
    err: str = "-"
    fwd_ms: float | None = None
    fwd_bwd_ms: float | None = None
    gbps: float | None = None
    note: str = ""

    def line(self) -> str:
        def ms(x: float | None) -> str:
            return f"{x:8.3f}" if x is not None else f"{'-':>8s}"

        gb = f"{self.gbps:7.0f}" if self.gbps is not None else f"{'-':>7s}"
        return (
            f"{self.op:14s} {self.shape:22s} {self.name:34s} {self.err:>20s} "
            f"{ms(self.fwd_ms)} {ms(self.fwd_bwd_ms)} {gb}  {self.note}"
        )


HEAD = (
    f"{'op':14s} {'shape':22s} {'variant':34s} {'max rel err (what)':>20s} "
    f"{'fwd ms':>8s} {'f+b ms':>8s} {'GB/s':>7s}"
)


def _time(runner: Runner) -> tuple[float, float, float]:
    from triton.testing import do_bench

    fwd = do_bench(runner.fwd, warmup=10, rep=50, return_mode="median")
    fwd_bwd = do_bench(runner.fwd_bwd, warmup=10, rep=50, return_mode="median")
    return fwd, fwd_bwd, runner.floor_fwd_bwd / fwd_bwd / 1e6


def _emit(rows: list[Row], row: Row) -> None:
    rows.append(row)
    print(row.line(), flush=True)


def _guarded(rows: list[Row], row: Row, fn: Callable[[Row], None]) -> None:
    t0 = time.time()
    try:
        fn(row)
    except Exception as e:  # one failing variant or peer is reported, the sweep goes on
        row.note = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
    row.note = (row.note + f" [{time.time() - t0:.0f}s]").strip()
    torch.cuda.empty_cache()
    _emit(rows, row)


def _shape_name(s: BenchShape) -> str:
    return f"B{s.B} T{s.T} H{s.H} K{s.K}"


def sweep_rwkv7(rows: list[Row], s: BenchShape, rwkv_lm: str | None, with_fla: bool = True) -> None:
    budget = BF16_BUDGET if s.dtype == torch.bfloat16 else FP32_BUDGET

    def cut_in(n: str, t: Tensor) -> Tensor:
        return t[:1, :4] if n == "state" else t[:1, :, :4]

    def cut_out(i: int, t: Tensor) -> Tensor:
        return t[:1, :, :4] if i == 0 else t[:1, :4]

    def reference(r, w, k, v, a, b, state):
        return list(rwkv7_naive(r, w, k, v, a, b, state, 1.0))

    x = rwkv7_bench_inputs(s)
    inputs = dict(zip("rwkvab", (t.detach() for t in x)))
    inputs["state"] = 0.1 * torch.randn(s.B, s.H, s.K, s.K, device=s.device)
    check = Float64Check(reference, inputs, cut_in, cut_out)
    for name, launch in RWKV7_VARIANTS.items():

        def run(row: Row, launch: Rwkv7Launch = launch) -> None:
            def kernel(**kw: Tensor) -> list[Tensor]:
                return list(chunk_rwkv7(**kw, scale=1.0, launch=launch))

            acc = check(kernel)
            row.err = str(acc)
            row.note = f"rounding floor {acc.floor:.1e}"
            if acc.error > max(budget, 1.5 * acc.floor):
                row.note += f"; OVER BUDGET {budget:.0e}"
            row.fwd_ms, row.fwd_bwd_ms, row.gbps = _time(
                autograd_runner(lambda: chunk_rwkv7(*x, launch=launch)[:1], x)
            )

        _guarded(rows, Row("rwkv7", _shape_name(s), f"skein {name}"), run)
    peers = [("fla chunk_rwkv7", REGISTRY["fla chunk_rwkv7"].build)] if with_fla else []
    if rwkv_lm:
        peers[:0] = [
            ("RWKV-LM clampw_v3 (no state)", rwkv_lm_cuda_case(rwkv_lm)),
            ("RWKV-LM clampw_v3 alt (no state)", rwkv_lm_cuda_case(rwkv_lm, "alt")),
        ]
    for name, build in peers:
        _guarded(rows, Row("rwkv7", _shape_name(s), name), lambda row, build=build: _peer(row, build, s))


def _peer(row: Row, build: Callable[[BenchShape], Runner], s: BenchShape) -> None:
    runner = build(s)
    row.fwd_ms, row.fwd_bwd_ms, row.gbps = _time(runner)
    if runner.accuracy is not None:
        row.err = str(runner.accuracy())


def sweep_delta_product(rows: list[Row], s: BenchShape) -> None:
    budget = BF16_BUDGET if s.dtype == torch.bfloat16 else FP32_BUDGET

    def cut_in(n: str, t: Tensor) -> Tensor:
        if n == "state":
            return t[:1, :4]
        return t[:1, :, :, :4] if n in ("k", "v", "beta") else t[:1, :, :4]

    def cut_out(i: int, t: Tensor) -> Tensor:
        return t[:1, :, :4] if i == 0 else t[:1, :4]

    def reference(q, k, v, beta, g, state):
        return list(delta_product_naive(q, k, v, beta, g, state, s.K**-0.5))

    x = delta_product_bench_inputs(s)
    inputs = dict(zip(("q", "k", "v", "beta", "g"), (t.detach() for t in x)))
    inputs["state"] = 0.1 * torch.randn(s.B, s.H, s.K, s.K, device=s.device)
    check = Float64Check(reference, inputs, cut_in, cut_out)
    for name, launch in DELTA_PRODUCT_VARIANTS.items():

        def run(row: Row, launch: DeltaProductLaunch = launch) -> None:
            def kernel(**kw: Tensor) -> list[Tensor]:
                return list(chunk_delta_product(**kw, launch=launch))

            acc = check(kernel)
            row.err = str(acc)
            row.note = f"rounding floor {acc.floor:.1e}"
            if acc.error > max(budget, 1.5 * acc.floor):
                row.note += f"; OVER BUDGET {budget:.0e}"
            runner = autograd_runner(lambda: chunk_delta_product(*x, launch=launch)[:1], x)
            row.fwd_ms, row.fwd_bwd_ms, row.gbps = _time(runner)

        _guarded(rows, Row("delta_product", _shape_name(s) + f" n{s.n_h}", f"skein {name}"), run)
    for name in ("fla chunk_gated_delta_rule (n_h*T)", "fla chunk_gated_delta_product"):
        build = REGISTRY[name].build
        _guarded(
            rows,
            Row("delta_product", _shape_name(s) + f" n{s.n_h}", name),
            lambda row, b=build: _peer(row, b, s),
        )


def sweep_wkv4(rows: list[Row], s: BenchShape) -> None:
    C = s.H * s.K
    cut = min(C, 256)

    def cut_in(n: str, t: Tensor) -> Tensor:
        return t[..., :cut]

    def cut_out(i: int, t: Tensor) -> Tensor:
        return t[..., :cut]

    def reference(w, u, k, v, aa, bb, pp):
        y, st = wkv4_naive(w, u, k, v, (aa, bb, pp))
        return [y, *st]

    x = list(wkv4_bench_inputs(s))
    inputs = dict(zip("wukv", (t.detach() for t in x)))
    inputs["aa"] = torch.randn(s.B, C, device=s.device)
    inputs["bb"] = torch.rand(s.B, C, device=s.device) + 0.5
    inputs["pp"] = torch.randn(s.B, C, device=s.device)
    check = Float64Check(reference, inputs, cut_in, cut_out)
    for name, (bc, ts) in WKV4_VARIANTS.items():

        def run(row: Row, bc: int = bc, ts: int = ts) -> None:
            def kernel(w, u, k, v, aa, bb, pp) -> list[Tensor]:
                y, st = fused_wkv4(w, u, k, v, (aa, bb, pp), block_c=bc, time_split=ts)
                return [y, *st]

            acc = check(kernel)
            row.err = str(acc)
            row.note = f"rounding floor {acc.floor:.1e}"
            if acc.error > max(FP32_BUDGET, 1.5 * acc.floor):
                row.note += f"; OVER BUDGET {FP32_BUDGET:.0e}"
            row.fwd_ms, row.fwd_bwd_ms, row.gbps = _time(
                autograd_runner(lambda: fused_wkv4(*x, block_c=bc, time_split=ts)[:1], x)
            )

        _guarded(rows, Row("wkv4 (fp32)", f"B{s.B} T{s.T} C{C}", f"skein {name}"), run)
    build = REGISTRY["fla fused_recurrent_rwkv4 (fp32)"].build
    _guarded(
        rows,
        Row("wkv4 (fp32)", f"B{s.B} T{s.T} C{C}", "fla fused_recurrent_rwkv4"),
        lambda row: _peer(row, build, s),
    )


def _cuda_dir(path: str | None) -> str | None:
    """RWKV-LM's rwkv7 CUDA sources: a checkout's RWKV-v7/train_temp/cuda, or that folder itself."""
    if path is None:
        return None
    sub = Path(path) / "RWKV-v7" / "train_temp" / "cuda"
    return str(sub if sub.is_dir() else Path(path))


NAMED_SHAPES = {"large": (8, 4096, 32), "small": (16, 512, 12)}


def rwkv7_shapes(spec: str) -> list[BenchShape]:
    """The bf16 RWKV-7 shapes (head size 64) of a --shapes value: names of NAMED_SHAPES or BxTxH."""
    shapes = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        dims = NAMED_SHAPES.get(item)
        if dims is None:
            try:
                B, T, H = (int(x) for x in item.split("x"))
            except ValueError:
                raise SystemExit(f"--shapes {item!r}: use large, small or BxTxH such as 2x4096x32") from None
            dims = (B, T, H)
        shapes.append(BenchShape(*dims, 64, torch.bfloat16))
    return shapes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rwkv_lm", help="RWKV-LM checkout (or its RWKV-v7/train_temp/cuda folder)")
    p.add_argument(
        "--ops", default="rwkv7,delta_product,wkv4", help="comma-separated: rwkv7, delta_product, wkv4"
    )
    p.add_argument("--variants", default="", help="comma-separated variant names to keep (default: all)")
    p.add_argument(
        "--no_fla", dest="fla", action="store_false", help="leave fla's rwkv7 kernel out (slow to compile)"
    )
    p.add_argument(
        "--shapes",
        default="large,small",
        help="rwkv7 shapes, comma-separated: large (B8 T4096 H32), small (B16 T512 H12) or BxTxH, "
        "e.g. 2x4096x32 (the 1.5B model at micro_bsz 2)",
    )
    args = p.parse_args()
    if args.variants:
        keep = {v.strip() for v in args.variants.split(",")}
        for table in (RWKV7_VARIANTS, DELTA_PRODUCT_VARIANTS, WKV4_VARIANTS):
            for name in [n for n in table if n not in keep]:
                del table[name]
    if not torch.cuda.is_available():
        raise SystemExit("gpu_kernel_sweep: needs a CUDA device")
    ops = args.ops.split(",")
    torch.manual_seed(0)
    print(torch.cuda.get_device_name(), f"torch {torch.__version__}", flush=True)
    print(HEAD + "\n" + "-" * len(HEAD), flush=True)
    rows: list[Row] = []
    t0 = time.time()
    if "rwkv7" in ops:
        for shape in rwkv7_shapes(args.shapes):
            sweep_rwkv7(rows, shape, _cuda_dir(args.rwkv_lm), args.fla)
    if "delta_product" in ops:
        sweep_delta_product(rows, BenchShape(8, 4096, 32, 64, torch.bfloat16, n_h=2))
    if "wkv4" in ops:
        sweep_wkv4(rows, BenchShape(8, 4096, 32, 64, torch.float32))
    print(f"\n=== all rows ({time.time() - t0:.0f}s; GB/s = fwd+bwd floor bytes / fwd+bwd time) ===")
    print(HEAD + "\n" + "-" * len(HEAD))
    for row in rows:
        print(row.line())


if __name__ == "__main__":
    main()
