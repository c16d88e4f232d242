"""Training throughput on one GPU in one call (under 10 minutes): `skein bench train` on RWKV-LM's
RWKV-7 demo recipe (configs/recipes/rwkv_lm_demo.yaml) with torch.compile, the fused loss and
checkpointing off and on, and CUDA graphs of the blocks (`--suite demo`), or on RWKV-7 1.5B at ctx
4096 (`--suite 1.5b`): full, selective and no gradient checkpointing at the micro_bsz that fits
the card, the last also with bf16 kernel operands, and a kernel profile of the no-checkpointing
step; one table at the end.

    python scripts/gpu_throughput.py [--suite demo|1.5b] [--shard PREFIX] [--budget_s 540] [--only PARTS]

Without --shard it writes a vocab-65536 shard first (scripts/bench_shard.py). Each run is its own
process with a time limit; runs that no longer fit in the budget are skipped and say so. Logs, JSON
and profiles go to $OUT (or ./bench_out), the table last on stdout and to $OUT/throughput.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = "configs/recipes/rwkv_lm_demo.yaml"
BIG = "configs/rwkv7/1.5b.yaml"


@dataclass(frozen=True)
class Run:
    name: str
    config: str
    overrides: list[str]
    steps: int
    warmup: int
    stage: int
    limit_s: float
    profile: bool = False
    micro_bsz: int = 0
    """The stage's micro_bsz when a run at half of it may replace one that ran out of memory."""

    @property
    def tag(self) -> str:
        return self.name.replace(" ", "_").replace(",", "").replace(".", "p")

    def halved(self) -> Run:
        """The same run at half the micro-batch (the tokens per step stay)."""
        key = f"stages.{self.stage}.micro_bsz="
        over = [o for o in self.overrides if not o.startswith(key)] + [f"{key}{self.micro_bsz // 2}"]
        name = self.name.replace(f"micro_bsz {self.micro_bsz}", f"micro_bsz {self.micro_bsz // 2}")
        return replace(self, name=name, overrides=over, micro_bsz=self.micro_bsz // 2)


def demo_runs() -> list[Run]:
    """The demo recipe's rows, most telling first."""
    plain, fused = ["trainer.fused_loss=false"], ["trainer.fused_loss=true"]
    eager, comp = ["trainer.compile=false"], ["trainer.compile=true"]
    return [
        Run("demo eager, plain loss", DEMO, eager + plain, 30, 5, 0, 120),
        Run("demo compile, fused loss", DEMO, comp + fused, 30, 5, 0, 200),
        Run("demo eager, fused loss", DEMO, eager + fused, 30, 5, 0, 90),
        Run("demo compile, plain loss", DEMO, comp + plain, 30, 5, 0, 120),
        Run("demo compile, fused, no ckpt", DEMO, comp + ["trainer.grad_checkpointing=false"], 30, 5, 0, 120),
        Run("demo compile, fused, selective ckpt", DEMO, comp + ["trainer.grad_checkpointing=selective"], 30, 5, 0, 120),
        Run("demo compile reduce-overhead, fused", DEMO, comp + ["trainer.compile_mode=reduce-overhead"], 30, 5, 0, 200),
    ]  # fmt: skip


def big_runs(gpu_gib: float) -> list[Run]:
    """RWKV-7 1.5B at ctx 4096 (stage 2), 32768 tokens a step, compiled, fused loss, one device; the
    micro-batch each checkpointing mode fits on a card of `gpu_gib` GiB (no checkpointing held
    about 105 GiB at micro_bsz 4 when eager; selective keeps the matmul and kernel outputs)."""
    large = gpu_gib > 100
    base = ["trainer.devices=1", "model.vocab_size=65536", "data.tokenizer=null",
            "checkpoint.snapshot_every_steps=0", "stages.2.tokens_per_step=32768", "trainer.compile=true"]  # fmt: skip

    def run(name: str, ckpt: str, mb: int, extra: list[str] | None = None, profile: bool = False) -> Run:
        over = [*base, f"trainer.grad_checkpointing={ckpt}", f"stages.2.micro_bsz={mb}", *(extra or [])]
        return Run(f"1.5B {name}, micro_bsz {mb}", BIG, over, 5, 2, 2, 170, profile, micro_bsz=mb)

    none_mb = 4 if large else 2
    return [
        run("no ckpt", "false", none_mb, profile=True),
        run("no ckpt, kernel_dots bf16", "false", none_mb, ["model.kernel_dots=bf16"]),
        run("selective ckpt", "selective", 8 if large else 4),
        run("full ckpt", "true", 8),
        run("selective ckpt, kernel_dots bf16", "selective", 8 if large else 4, ["model.kernel_dots=bf16"]),
    ]


def select(runs: list[Run], only: str) -> list[Run]:
    """The runs whose names contain one of the comma-separated parts of `only` (all when empty)."""
    parts = [x.strip() for x in only.split(",") if x.strip()]
    if not parts:
        return runs
    picked = [r for r in runs if any(x in r.name for x in parts)]
    if not picked:
        names = "; ".join(r.name for r in runs)
        raise SystemExit(f"--only {only!r} names none of this suite's runs: {names}")
    return picked


def gpu_memory_gib() -> float:
    """The first GPU's memory, from nvidia-smi (the script itself never starts CUDA)."""
    q = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return float(q.stdout.split()[0]) / 1024


def run_one(r: Run, limit: float, shard: str, out: Path) -> dict | str:
    name, tag = r.name, r.tag
    js, log = out / f"{tag}.json", out / f"{tag}.log"
    cmd = [
        sys.executable, "-m", "skein.train.cli", "bench", "train", r.config,
        f"data.train=[{shard}]", *r.overrides,
        "--steps", str(r.steps), "--warmup", str(r.warmup), "--stage", str(r.stage), "--json", str(js),
    ]  # fmt: skip
    if r.profile:
        cmd += ["--profile", str(out / f"{tag}.profile.md")]
    t0 = time.time()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        try:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            return f"timed out after {limit} s (log {log.name})"
    print(f"{name}: rc {rc} in {time.time() - t0:.0f} s", flush=True)
    if rc != 0 or not js.exists():
        tail = log.read_text().strip().splitlines()[-1:] or ["?"]
        return f"failed rc {rc}: {tail[0][:120]} (log {log.name})"
    return json.loads(js.read_text())


def table(results: list[tuple[str, dict | str]]) -> str:
    head = "| run | tokens/s/GPU | step ms (median) | MFU measured | MFU datasheet | peak GiB | data/fwd/bwd/opt/other ms |"
    lines = [head, "|" + " --- |" * 7]
    for name, r in results:
        if isinstance(r, str):
            lines.append(f"| {name} | {r} | | | | | |")
            continue
        b = r["breakdown_s"]
        parts = "/".join(f"{1e3 * b[k]:.0f}" for k in ("data", "forward", "backward", "optimizer", "other"))
        sheet = f"{100 * r['mfu_datasheet']:.1f}%" if r["mfu_datasheet"] else "n/a"
        lines.append(
            f"| {name} | {r['tokens_per_s_per_gpu']:,.0f} | {1e3 * r['step_s_median']:.1f} | "
            f"{100 * r['mfu_measured']:.1f}% of {r['matmul_peak_tflops']:.0f} | {sheet} | "
            f"{r['peak_memory_gb']:.1f} | {parts} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shard", default=None, help="binidx prefix, vocab <= 65536 (default: make one)")
    ap.add_argument("--suite", choices=("demo", "1.5b"), default="demo", help="which rows to run")
    ap.add_argument("--budget_s", type=float, default=540.0, help="stop starting runs after this")
    ap.add_argument(
        "--only", default="", help="comma-separated parts of run names to keep, e.g. 'full ckpt,selective'"
    )
    a = ap.parse_args()
    t_start = time.time()
    out = Path(os.environ.get("OUT") or "bench_out").resolve()
    out.mkdir(parents=True, exist_ok=True)
    shard = a.shard
    if shard is None:
        shard = str(out / "shard" / "bench")
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "bench_shard.py"),
                "--output",
                shard,
                "--tokens",
                "3000000",
            ],
            cwd=ROOT,
            check=True,
        )
    results: list[tuple[str, dict | str]] = []
    runs = select(demo_runs() if a.suite == "demo" else big_runs(gpu_memory_gib()), a.only)
    for r in runs:
        left = a.budget_s - (time.time() - t_start)
        if left < 45:
            results.append((r.name, "skipped: out of time budget"))
            continue
        res = run_one(r, min(r.limit_s, left), shard, out)
        log = out / f"{r.tag}.log"
        if isinstance(res, str) and r.micro_bsz > 1 and "out of memory" in log.read_text(errors="replace"):
            results.append((r.name, res))
            r = r.halved()  # the card is smaller than the row assumed: once more at half the micro-batch
            left = a.budget_s - (time.time() - t_start)
            if left < 45:
                continue
            res = run_one(r, min(r.limit_s, left), shard, out)
        results.append((r.name, res))
    text = table(results)
    (out / "throughput.md").write_text(text + "\n")
    print(f"\nGPU throughput ({time.time() - t_start:.0f} s; logs in {out})\n{text}")


if __name__ == "__main__":
    main()
