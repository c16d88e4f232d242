"""Does sharing a context's state pay? `skein eval harness` scores multiple-choice requests either
as whole sequences in right-padded batches (score_pairs) or, for a recurrent model, reads each
distinct context once and starts every continuation from its state (score_shared).

    python scripts/bench_harness.py --arch rwkv7 --n_layer 4 --d_model 128 --threads 1

Requests shaped like hellaswag's: each context (--ctx tokens on average) with --choices
continuations (--cont tokens on average); lengths vary +-50%. Prints the wall and CPU seconds of
each way (the fastest of --repeats; CPU time is the steadier figure on a shared machine) and the
largest difference between their log-likelihoods.
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch

from skein.rwkv import build_model
from skein.train.eval.lm_eval_model import score_pairs, score_shared


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="rwkv7")
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--d_model", type=int, default=128)
    p.add_argument("--contexts", type=int, default=32)
    p.add_argument("--choices", type=int, default=4)
    p.add_argument("--ctx", type=int, default=100)
    p.add_argument("--cont", type=int, default=25)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="time each way this many times, keep the fastest")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    fields = {"head_size": 64} if a.arch == "rwkv7" else {}
    model = build_model(
        {"arch": a.arch, "vocab_size": 1024, "n_layer": a.n_layer, "d_model": a.d_model, **fields}
    )
    with torch.no_grad():  # off the init (whose zero projections flatten the logits)
        for t in model.parameters():
            t.add_(torch.randn_like(t) * 0.05)
    dev = torch.device(a.device)
    model.to(dev).eval()
    rng = random.Random(0)

    def ids(n: int) -> list[int]:
        return [rng.randrange(1024) for _ in range(max(1, rng.randint(n // 2, n * 3 // 2)))]

    pairs = [(c, ids(a.cont)) for c in (ids(a.ctx) for _ in range(a.contexts)) for _ in range(a.choices)]
    tokens = sum(len(c) + len(x) for c, x in pairs)
    score_pairs(model, pairs[: a.batch_size], a.batch_size, 4096, dev)  # warm-up
    times, results = {}, {}
    for name, fn in (("whole sequences", score_pairs), ("shared contexts", score_shared)):
        for _ in range(a.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn(model, pairs, a.batch_size, 4096, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            times[name] = min(times.get(name, (math.inf, math.inf)), (wall, cpu))
    diff = max(abs(x[0] - y[0]) for x, y in zip(*results.values()))
    print(f"{a.arch} L{a.n_layer} D{a.d_model}, {len(pairs)} requests ({a.contexts} contexts x {a.choices}), "
          f"{tokens} tokens, batch {a.batch_size}, {a.threads} threads on {dev}")  # fmt: skip
    for name, (wall, cpu) in times.items():
        print(f"  {name:16s} {wall:7.2f} s wall, {cpu:7.2f} s CPU")
    w, s = times["whole sequences"], times["shared contexts"]
    print(f"  speed-up {w[0] / s[0]:.2f}x wall, {w[1] / s[1]:.2f}x CPU time; max |difference| {diff:.2e}")


if __name__ == "__main__":
    main()
