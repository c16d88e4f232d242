"""Make a vocab-65536 binidx shard for throughput benchmarks when no real one is at hand.

First choice: the Python standard library's source tokenized with the RWKV World vocabulary
(`skein prepare --tokenizer rwkv_world`, needs the `rwkv` pip package for the vocabulary file):
real text, so losses fall as on real data. Otherwise: Zipf-distributed random ids over 65536
(the same compute per token; the loss stays near the distribution's entropy).

    python scripts/bench_shard.py --output /tmp/skein-bench/shard --tokens 4000000
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from skein.data.binidx import BinIdxWriter
from skein.data.prepare import prepare

VOCAB = 65536


def zipf_shard(output: str, tokens: int, seed: int = 0) -> None:
    """`tokens` ids drawn from p(i) ~ 1 / (i + 10), in documents of 2048."""
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(VOCAB) + 10.0)
    p /= p.sum()
    with BinIdxWriter(output, np.uint16) as w:
        for _ in range(0, tokens, 2048):
            w.add_document(rng.choice(VOCAB, size=2048, p=p).astype(np.uint16))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", required=True, help="binidx prefix to write")
    ap.add_argument("--tokens", type=int, default=4_000_000, help="tokens wanted (about)")
    ap.add_argument("--random", action="store_true", help="skip the tokenizer; Zipf random ids")
    a = ap.parse_args()
    if not a.random:
        try:
            prepare(output=a.output, tokenizer="rwkv_world", stdlib_max_bytes=4 * a.tokens, progress=False)
            print(f"bench_shard: {a.output}: stdlib source, rwkv_world tokenizer")
            return
        except Exception as e:  # the vocabulary file is an optional install: say why, use ids
            print(f"bench_shard: rwkv_world tokenizer unavailable ({e}); writing Zipf ids", file=sys.stderr)
    zipf_shard(a.output, a.tokens)
    print(f"bench_shard: {a.output}: {a.tokens} Zipf random ids over {VOCAB}")


if __name__ == "__main__":
    main()
