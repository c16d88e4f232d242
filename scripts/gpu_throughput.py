"""Training throughput on one GPU in one call (about 8 minutes): `skein bench train` on RWKV-LM's
RWKV-7 demo recipe (configs/recipes/rwkv_lm_demo.yaml) with torch.compile and the fused loss off and
on, and on RWKV-7 1.5B at ctx 4096 (micro_bsz 8, gradient checkpointing); one table at the end.

    python scripts/gpu_throughput.py [--shard PREFIX] [--budget_s 470]

Without --shard it writes a vocab-65536 shard first (scripts/bench_shard.py). Each run is its own
process with a time limit; runs that no longer fit in the budget are skipped and say so. Logs and
JSON go to $OUT (or ./bench_out), the table last on stdout and to $OUT/throughput.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = "configs/recipes/rwkv_lm_demo.yaml"
BIG = "configs/rwkv7/1.5b.yaml"
BIG_STAGE = [
    "trainer.devices=1",
    "model.vocab_size=65536",
    "data.tokenizer=null",
    "checkpoint.snapshot_every_steps=0",
    "stages.2.micro_bsz=8",
    "stages.2.tokens_per_step=32768",
]

# (name, config, overrides, steps, warmup, stage, seconds allowed), most telling first
RUNS = [
    ("demo eager, plain loss", DEMO, ["trainer.compile=false", "trainer.fused_loss=false"], 30, 5, 0, 120),
    ("demo compile, fused loss", DEMO, ["trainer.compile=true", "trainer.fused_loss=true"], 30, 5, 0, 200),
    ("1.5B ctx4096 eager, fused", BIG, [*BIG_STAGE, "trainer.compile=false"], 8, 3, 2, 150),
    ("demo eager, fused loss", DEMO, ["trainer.compile=false", "trainer.fused_loss=true"], 30, 5, 0, 90),
    ("demo compile, plain loss", DEMO, ["trainer.compile=true", "trainer.fused_loss=false"], 30, 5, 0, 120),
    (
        "demo compile, fused, no ckpt",
        DEMO,
        ["trainer.compile=true", "trainer.grad_checkpointing=false"],
        30,
        5,
        0,
        120,
    ),
    ("1.5B ctx4096 compile, fused", BIG, [*BIG_STAGE, "trainer.compile=true"], 8, 3, 2, 240),
    (
        "1.5B ctx4096 compile, fused, selective ckpt",
        BIG,
        [*BIG_STAGE, "trainer.compile=true", "trainer.grad_checkpointing=selective"],
        8,
        3,
        2,
        240,
    ),
    (
        "demo compile, fused, selective ckpt",
        DEMO,
        ["trainer.compile=true", "trainer.grad_checkpointing=selective"],
        30,
        5,
        0,
        120,
    ),
]


def run_one(name, config, overrides, steps, warmup, stage, limit, shard, out: Path) -> dict | str:
    tag = name.replace(" ", "_").replace(",", "")
    js, log = out / f"{tag}.json", out / f"{tag}.log"
    cmd = [
        sys.executable, "-m", "skein.train.cli", "bench", "train", config,
        f"data.train=[{shard}]", *overrides,
        "--steps", str(steps), "--warmup", str(warmup), "--stage", str(stage), "--json", str(js),
    ]  # fmt: skip
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
    ap.add_argument("--budget_s", type=float, default=470.0, help="stop starting runs after this")
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
    for name, config, overrides, steps, warmup, stage, limit in RUNS:
        left = a.budget_s - (time.time() - t_start)
        if left < 45:
            results.append((name, "skipped: out of time budget"))
            continue
        results.append(
            (name, run_one(name, config, overrides, steps, warmup, stage, min(limit, left), shard, out))
        )
    text = table(results)
    (out / "throughput.md").write_text(text + "\n")
    print(f"\nGPU throughput ({time.time() - t_start:.0f} s; logs in {out})\n{text}")


if __name__ == "__main__":
    main()
