"""Reproduce the Zoology MQAR comparison on one GPU, on a grid reduced to fit about 8 minutes:
RWKV-7 at state sizes 8k and 16k per layer (d_model 128 and 256, 64-wide heads: 2 x 64 x 64 and
4 x 64 x 64), RWKV-7 with the shared short convolution of length 4, DeltaNet (DeltaProduct with
n_h = 1, its q/k/v short convolutions, no gates) at the same state sizes, and the attention
baseline, each on the four Zoology settings (64:4, 128:8, 256:16, 512:64), two layers, no MLP.

Reductions against the published recipe (100k examples per setting, as here by default, up to 64
epochs, four learning rates): one or two learning rates, and a time budget per run that cuts
its step count (the cosine schedule shrinks with it). Which cells ran, how many steps each got,
and which were skipped are in results.json and the printed table.

    python scripts/repro_mqar.py                          # results in $OUT or results/mqar-<time>
    python scripts/repro_mqar.py --smoke --device cpu     # a tiny run of the whole script

Writes <out>/<group>/ (the mqar suite's directory per group of runs), best.csv, summary.csv,
results.json and accuracy_vs_state.png, then prints the summary table (mean accuracy over the
settings that ran, at each cell's best learning rate).
"""

from __future__ import annotations

import argparse
import os
import time
import traceback
from pathlib import Path

# (group name, mixer, d_models, share of the time budget); run in this order.
GROUPS = [
    ("rwkv7", "rwkv7", [128, 256], 0.3),
    ("deltanet", "deltanet", [128, 256], 0.3),
    ("rwkv7_conv4", "rwkv7_conv4", [128], 0.2),
    ("attention", "attention", [128], 0.2),
]
GROUP_NAMES = [g[0] for g in GROUPS]
SETTINGS = ["64:4", "128:8", "256:16", "512:64"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or time.strftime("results/mqar-%Y%m%d-%H%M%S"))
    p.add_argument("--minutes", type=float, default=6.5, help="training time for the whole grid")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3])
    p.add_argument("--settings", nargs="+", default=SETTINGS)
    p.add_argument("--num_train", type=int, default=100_000, help="examples per setting (Zoology: 100k)")
    p.add_argument("--num_test", type=int, default=1_000)
    p.add_argument("--epochs", type=int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--groups", nargs="+", default=list(GROUP_NAMES), help="groups to run (shares rescaled)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script end to end")
    a = p.parse_args()

    from skein.train.eval.mqar import plot
    from skein.train.eval.output import ResultsDir, table

    out = Path(a.out)
    results_dir = ResultsDir(out)
    sizes = dict(settings=a.settings, lrs=a.lrs, num_train=a.num_train, num_test=a.num_test, epochs=a.epochs)
    unknown = set(a.groups) - set(GROUP_NAMES)
    if unknown:
        raise SystemExit(f"--groups: unknown {sorted(unknown)}; choose from {GROUP_NAMES}")
    kept = [g for g in GROUPS if g[0] in a.groups]
    total = sum(g[3] for g in kept)
    groups = [(n, m, d, share / total) for n, m, d, share in kept]
    if a.smoke:
        sizes = dict(settings=["32:4", "64:8"], lrs=a.lrs, num_train=256, num_test=32, epochs=2,
                     vocab_size=64, batch_size=32)  # fmt: skip
        groups = [(n, m, [32], s) for n, m, _, s in groups]
    start, summary, best, ran, skipped, errors = time.monotonic(), [], [], [], [], {}
    for name, mixer, d_models, share in groups:
        runs = len(d_models) * len(sizes["settings"]) * len(sizes["lrs"])
        budget = a.minutes * share
        print(f"== {name}: d_model {d_models}, {runs} runs in {budget:.2f} min", flush=True)
        try:
            r = _run_group(out / name, mixer, d_models, budget, runs, a, sizes)
        except Exception as e:  # one failed group must not cost the others
            traceback.print_exc()
            errors[name] = f"{type(e).__name__}: {e}"
            continue
        summary += r["summary"]
        best += r["best"]
        ran += [f"{b['mixer']} d{b['d_model']} {b['seq_len']}:{b['kv_pairs']}" for b in r["best"]]
        skipped += r["skipped"]
    rows = [[s["mixer"], s["d_model"], s["state_size"], s["cells"], s["mean_accuracy"]] for s in summary]
    header = ["mixer", "d_model", "state_size", "cells", "mean_accuracy"]
    if best:
        results_dir.csv("best.csv", list(best[0]), [list(b.values()) for b in best])
    results_dir.csv("summary.csv", header, rows)
    if rows:
        results_dir.figure("accuracy_vs_state.png", plot(rows))
    results_dir.json("results.json", {"args": vars(a), "summary": summary, "best": best, "cells_ran": ran,
                                      "skipped": skipped, "errors": errors})  # fmt: skip
    print(f"\nMQAR, 2 layers, settings {sizes['settings']}, lrs {sizes['lrs']}, {sizes['num_train']} train "
          f"examples ({(time.monotonic() - start) / 60:.1f} min; results in {out})")  # fmt: skip
    print("per cell (best lr): " + ", ".join(
        f"{b['mixer']} d{b['d_model']} {b['seq_len']}:{b['kv_pairs']}={b['best_accuracy']:.3f}" for b in best))  # fmt: skip
    if skipped or errors:
        print(f"skipped: {skipped}  errors: {errors}")
    print(table(header, rows))


def _run_group(
    path: Path, mixer: str, d_models: list[int], minutes: float, runs: int, a, sizes: dict
) -> dict:
    from skein.train.eval.mqar import mqar

    return mqar(output=str(path), mixers=[mixer], d_models=d_models, max_minutes=minutes,
                run_minutes=0.85 * minutes / runs, device=a.device, seed=a.seed, progress=False, **sizes)  # fmt: skip


if __name__ == "__main__":
    main()
