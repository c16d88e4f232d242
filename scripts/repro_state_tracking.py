"""Reproduce the DeltaProduct paper's state-tracking result on S3 on one GPU (about 8 minutes):
one DeltaProduct layer with 8 heads, trained on word problems of length 128 and tested at 512,

    n_h = 2 with negative eigenvalues    expected: near-perfect accuracy at every test position
    n_h = 1 with negative eigenvalues    expected: fails beyond short prefixes
    n_h = 2 and n_h = 1 without          expected: both fail

with the paper's lr 1e-3, batch 2048 and cosine schedule, but a training time budget per variant
in place of its 100 epochs (the step count each run reached is in the table and results.json).

    python scripts/repro_state_tracking.py                  # results in $OUT or results/state_tracking
    python scripts/repro_state_tracking.py --smoke --device cpu   # a tiny run of the whole script

Writes <out>/<variant>/ (the state suite's directory per variant), summary.csv, results.json and
accuracy_by_position.png (the four variants on one plot), then prints the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
import traceback
from pathlib import Path

VARIANTS = {
    "nh2_neg": {"n_householder": 2, "allow_neg_eigval": True},
    "nh1_neg": {"n_householder": 1, "allow_neg_eigval": True},
    "nh2_noneg": {"n_householder": 2, "allow_neg_eigval": False},
    "nh1_noneg": {"n_householder": 1, "allow_neg_eigval": False},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", default=os.environ.get("OUT") or time.strftime("results/state_tracking-%Y%m%d-%H%M%S")
    )
    p.add_argument("--minutes", type=float, default=6.5, help="training time for all variants together")
    p.add_argument("--num_train", type=int, default=100_000)
    p.add_argument("--num_test", type=int, default=2_000)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch_size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script end to end")
    a = p.parse_args()

    from skein.train.eval.output import ResultsDir, table
    from skein.train.eval.state import state

    out = Path(a.out)
    results_dir = ResultsDir(out)
    sizes = dict(train_len=128, test_len=512, num_train=a.num_train, num_test=a.num_test, epochs=a.epochs,
                 batch_size=a.batch_size)  # fmt: skip
    model = {}
    if a.smoke:
        sizes = dict(train_len=16, test_len=48, num_train=256, num_test=32, epochs=2, batch_size=64)
        model = {"d_model": 32, "n_head": 2}
    start, results, rows = time.monotonic(), {}, []
    for i, name in enumerate(a.variants):
        overrides = VARIANTS[name]
        left = 60 * a.minutes - (time.monotonic() - start)
        budget = left / (len(a.variants) - i) / 60
        print(f"== {name}: {overrides}, {budget:.2f} min", flush=True)
        try:
            r = state(output=str(out / name), groups=["S3"], model={**model, **overrides}, lr=a.lr,
                      run_minutes=budget, device=a.device, seed=a.seed, progress=False, **sizes)  # fmt: skip
            g = r["groups"]["S3"]
            results[name] = {"model": r["model"], **g}
            rows.append([name, g["steps"], g["planned_steps"], g["epochs"], g["accuracy_within_train_len"],
                         g["accuracy_beyond_train_len"], g["accuracy_at_test_len"]])  # fmt: skip
        except Exception as e:  # one failed variant must not cost the others
            traceback.print_exc()
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            rows.append([name, "error", "", "", "", "", ""])
    header = [
        "variant",
        "steps",
        "planned_steps",
        "epochs",
        "acc<=train_len",
        "acc>train_len",
        "acc@test_len",
    ]
    results_dir.csv("summary.csv", header, rows)
    results_dir.figure("accuracy_by_position.png", plot(out))
    results_dir.json("results.json", {"args": vars(a), "variants": results})
    print(f"\nS3, 1 layer, train {sizes['train_len']} / test {sizes['test_len']}, lr {a.lr}, batch {sizes['batch_size']} "
          f"({(time.monotonic() - start) / 60:.1f} min; results in {out})")  # fmt: skip
    print(table(header, rows))


def plot(out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in VARIANTS:
        path = out / name / "accuracy_by_position.csv"
        if not path.is_file():
            continue
        with open(path) as f:
            rows = list(csv.DictReader(f))
        ax.plot([int(r["position"]) for r in rows], [float(r["accuracy"]) for r in rows], label=name)
    ax.axvline(128, color="grey", linestyle="--", label="train length")
    ax.set_xlabel("position")
    ax.set_ylabel("accuracy (S3 running product)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


if __name__ == "__main__":
    main()
