"""Throughput of `prepare` against the `tokenizers` library's own batch encoder on the same text.

The text is the default stdlib corpus (`--mb` megabytes of .py files, one document each), written
to a .jsonl file. Measured, each run in a fresh process, the kinds interleaved `--repeat` times:
  - prepare:<spec>: skein `prepare` with `--workers` processes (read + tokenize + write shards),
    for hf:<--tokenizer-json>, rwkv_world and byte;
  - encode_batch: `tokenizers` `Tokenizer.encode_batch` over all documents held in memory with
    RAYON_NUM_THREADS=`--workers` (tokenize only).
Reported: median wall time, tokens/s, and tokens per CPU-second (user + system time of the process
and its children), which moves less than wall time when other jobs share the machine.

Usage: python scripts/bench_prepare.py --tokenizer-json 20B_tokenizer.json --mb 8 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(kind: str, corpus: str, workers: int) -> dict[str, float]:
    """One timed run of `kind` in this process: tokens, wall seconds, CPU seconds."""
    if kind == "encode_batch":
        from tokenizers import Tokenizer

        texts = [json.loads(line)["text"] for line in open(corpus)]
        tok = Tokenizer.from_file(os.environ["BENCH_TOKENIZER"])
        c0, t0 = cpu_seconds(), time.perf_counter()
        enc = tok.encode_batch(texts, add_special_tokens=False)
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        tokens = sum(len(e.ids) for e in enc) + len(texts)  # + one EOD per document, as prepare counts
    else:
        from skein.data.prepare import prepare

        c0, t0 = cpu_seconds(), time.perf_counter()
        s = prepare(
            [corpus], corpus + ".out", tokenizer=kind.split(":", 1)[1], workers=workers, progress=False
        )
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        tokens = s["tokens"]
    return {"tokens": tokens, "wall": wall, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--tokenizer-json", required=True, help="a Hugging Face tokenizer.json (e.g. GPT-NeoX-20B's)"
    )
    ap.add_argument("--mb", type=float, default=8.0, help="corpus size in MB of UTF-8")
    ap.add_argument("--workers", type=int, default=2, help="processes for prepare, threads for tokenizers")
    ap.add_argument("--repeat", type=int, default=5, help="runs per kind (the median is reported)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--corpus", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        with open(os.devnull, "w") as quiet:
            stdout, sys.stdout = sys.stdout, quiet
            result = measure(args.measure, args.corpus, args.workers)
            sys.stdout = stdout
        print(json.dumps(result))
        return

    from skein.data.stdlib_corpus import stdlib_documents

    texts = [t for _, t in stdlib_documents(int(args.mb * 1e6)) if t]  # prepare skips empty files too
    n_bytes = sum(len(t.encode()) for t in texts)
    kinds = [f"prepare:hf:{args.tokenizer_json}", "encode_batch", "prepare:rwkv_world", "prepare:byte"]
    env = {**os.environ, "RAYON_NUM_THREADS": str(args.workers), "BENCH_TOKENIZER": args.tokenizer_json}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = str(Path(tmp) / "corpus.jsonl")
        Path(corpus).write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        for _ in range(args.repeat):
            for kind in kinds:
                cmd = [
                    sys.executable,
                    __file__,
                    "--tokenizer-json",
                    args.tokenizer_json,
                    "--workers",
                    str(args.workers),
                ]
                out = subprocess.run(
                    cmd + ["--measure", kind, "--corpus", corpus], env=env, capture_output=True, text=True
                )
                if out.returncode:
                    raise RuntimeError(f"{kind} failed:\n{out.stderr}")
                runs[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))

    print(f"corpus: {len(texts)} documents, {n_bytes / 1e6:.1f} MB; {args.workers} workers/threads; "
          f"median of {args.repeat}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(f"{'what':<34} {'tokens':>10} {'wall s':>7} {'tokens/s':>11} {'tokens/CPU-s':>13}")
    for kind in kinds:
        name = "prepare, hf" if kind.startswith("prepare:hf:") else kind.replace(":", ", ")
        n = runs[kind][0]["tokens"]
        wall = statistics.median(r["wall"] for r in runs[kind])
        cpu = statistics.median(r["cpu"] for r in runs[kind])
        print(f"{name:<34} {n:>10,} {wall:>7.2f} {n / wall:>11,.0f} {n / cpu:>13,.0f}")


if __name__ == "__main__":
    main()
