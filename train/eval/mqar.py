"""The MQAR suite (Zoology): for each mixer, d_model and (seq_len, kv pairs) cell, train a
two-layer mixer-only model at every learning rate and report the test accuracy at the best one,
with each model's recurrent state size per layer.

Writes cells.csv (every mixer, d_model, setting, lr), best.csv (the best lr per cell), summary.csv
(the mean over settings of the best accuracy per mixer and d_model), results.json and
accuracy_vs_state.png. Cells left when `max_minutes` runs out are listed as skipped.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from skein.data.mqar import MQARSetting, mqar_splits
from skein.train.eval.common import pick_device, zoology_batch_size
from skein.train.eval.fit import FitConfig, fit
from skein.train.eval.models import MixerLM, mixer_spec, num_params
from skein.train.eval.output import ResultsDir, results_path, table
from skein.train.eval.state_size import state_size
from skein.train.typed import ConfigError

ZOOLOGY_SETTINGS = ["64:4", "128:8", "256:16", "512:64"]


def parse_settings(settings: list[str], vocab_size: int) -> list[MQARSetting]:
    out = []
    for s in settings:
        try:
            seq_len, kv = (int(v) for v in s.split(":"))
            out.append(MQARSetting(seq_len, kv, vocab_size))
        except ValueError as e:
            raise ConfigError(
                f"--settings {s!r}: expected SEQ_LEN:KV_PAIRS with room for the queries ({e})"
            ) from e
    return out


def mqar(
    output: str | None = None,
    mixers: list[str] | None = None,
    d_models: list[int] | None = None,
    settings: list[str] | None = None,
    lrs: list[float] | None = None,
    n_layer: int = 2,
    vocab_size: int = 8192,
    num_train: int = 100_000,
    num_test: int = 3_000,
    epochs: int = 64,
    target_accuracy: float = 0.99,
    batch_size: int | None = None,
    max_minutes: float | None = None,
    run_minutes: float | None = None,
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    setup: str = "skein",
) -> dict[str, Any]:
    """Multi-query associative recall sweep: accuracy per mixer, d_model and setting at the best lr.

    Args:
        output: results directory (new or empty; default runs/eval/mqar).
        mixers: rwkv7, deltanet or attention, each optionally with the shared short convolution
            as `_conv4` (default: rwkv7 rwkv7_conv4 deltanet attention).
        d_models: model widths (default 64 128 256 512).
        settings: SEQ_LEN:KV_PAIRS cells (default 64:4 128:8 256:16 512:64).
        lrs: learning rates (default logspace(-4, -2, 4)).
        n_layer: mixer layers.
        vocab_size: keys come from its lower half, values from its upper half.
        num_train: training examples per setting.
        num_test: test examples per setting (none equal to a training example).
        epochs: at most this many passes over the training set.
        target_accuracy: stop a run after an epoch reaching this test accuracy.
        batch_size: examples per step (default: Zoology's 512 / 256 / 128 by sequence length).
        max_minutes: skip the cells not started within this many minutes (reported as skipped).
        run_minutes: training time budget of each run; its step count (and cosine schedule)
            shrinks to fit after a few timed steps.
        quick: a CPU-sized sweep of minutes (one small cell, two lrs, a small vocabulary).
        device: auto (CUDA when present), cpu, cuda, cuda:1, ...
        seed: seed of the data and of the initialisation.
        progress: show a progress bar.
        setup: skein (the default: skein's mixer-only models, warmup, clipping, best epoch) or
            paper (zoology's figure-2 backbone and training point by point, the final epoch's
            accuracy; train/eval/paper.py).
    """
    if setup not in ("skein", "paper"):
        raise ConfigError(f"--setup {setup!r}: skein or paper")
    if setup == "paper":  # figure 2 has no shared short convolution
        mixers = mixers or ["attention", "rwkv7", "deltanet"]
    if quick:
        mixers = mixers or ["rwkv7", "rwkv7_conv4", "deltanet", "attention"]
        d_models, settings = d_models or [32], settings or ["32:4"]
        lrs, vocab_size = lrs or [3e-3, 1e-2], 64
        num_train, num_test, epochs = min(num_train, 2048), min(num_test, 128), min(epochs, 8)
        batch_size = batch_size or 64
    mixers = mixers or ["rwkv7", "rwkv7_conv4", "deltanet", "attention"]
    for m in mixers:
        try:
            mixer_spec(m, 64)
        except ValueError as e:
            raise ConfigError(f"--mixers: {e}") from e
    d_models = d_models or [64, 128, 256, 512]
    lrs = lrs or [10 ** (-4 + 2 * i / 3) for i in range(4)]
    cells = parse_settings(settings or ZOOLOGY_SETTINGS, vocab_size)
    out = ResultsDir(results_path("mqar", output))
    dev = pick_device(device)
    if setup == "paper":
        from skein.train.eval.paper import mqar_paper

        r = mqar_paper(out, mixers, d_models, cells, lrs, n_layer, num_train, num_test, epochs, batch_size,
                       None if run_minutes is None else 60 * run_minutes, dev, seed, progress)  # fmt: skip
        print(f"results: {out.path}")
        return r
    out.json(
        "args.json",
        {"mixers": mixers, "d_models": d_models, "settings": [c.__dict__ for c in cells], "lrs": lrs,
         "n_layer": n_layer, "num_train": num_train, "num_test": num_test, "epochs": epochs,
         "target_accuracy": target_accuracy, "batch_size": batch_size, "max_minutes": max_minutes,
         "run_minutes": run_minutes,
         "device": str(dev), "seed": seed},
    )  # fmt: skip

    start, rows, skipped = time.monotonic(), [], []
    header = ["mixer", "d_model", "seq_len", "kv_pairs", "lr", "accuracy", "best_accuracy", "epochs", "steps",
              "state_size", "params"]  # fmt: skip
    for cell in cells:
        data = None
        for mixer in mixers:
            for d in d_models:
                for lr in lrs:
                    name = f"{mixer} d{d} {cell.seq_len}:{cell.num_kv_pairs} lr{lr:.1e}"
                    if max_minutes is not None and time.monotonic() - start > 60 * max_minutes:
                        skipped.append(name)
                        continue
                    if data is None:
                        data = mqar_splits(cell, num_train, num_test, seed)
                    torch.manual_seed(seed)
                    model = MixerLM(mixer_spec(mixer, d), vocab_size, n_layer, d)
                    cfg = FitConfig(
                        lr=lr,
                        epochs=epochs,
                        batch_size=batch_size or zoology_batch_size(cell.seq_len),
                        target_accuracy=target_accuracy,
                        max_seconds=None if run_minutes is None else 60 * run_minutes,
                    )
                    r = fit(model, *data, cfg, dev, seed, desc=name, progress=progress)
                    size = state_size(model.config, cell.seq_len)
                    rows.append([mixer, d, cell.seq_len, cell.num_kv_pairs, lr, r["accuracy"],
                                 r["best_accuracy"], r["epochs"], r["steps"], size, num_params(model)])  # fmt: skip
                    out.csv("cells.csv", header, rows)
                    print(f"{name}: accuracy {r['accuracy']:.4f} (best {r['best_accuracy']:.4f}), "
                          f"{r['steps']}/{r['planned_steps']} steps", flush=True)  # fmt: skip
    best = best_per_cell(rows)
    summary = summarise(best)
    out.csv("best.csv", header, best)
    out.csv("summary.csv", ["mixer", "d_model", "state_size", "cells", "mean_accuracy"], summary)
    if summary:
        out.figure("accuracy_vs_state.png", plot(summary))
    results = {
        "summary": [
            dict(zip(["mixer", "d_model", "state_size", "cells", "mean_accuracy"], s)) for s in summary
        ],
        "best": [dict(zip(header, b)) for b in best],
        "skipped": skipped,
        "minutes": (time.monotonic() - start) / 60,
    }
    out.json("results.json", results)
    print(table(["mixer", "d_model", "state_size", "cells", "mean_accuracy"], summary))
    if skipped:
        print(f"skipped {len(skipped)} runs (max_minutes={max_minutes}): first {skipped[0]}")
    print(f"results: {out.path}")
    return results


def best_per_cell(rows: list[list[Any]]) -> list[list[Any]]:
    """The row with the highest best_accuracy per (mixer, d_model, seq_len, kv_pairs)."""
    best: dict[tuple, list[Any]] = {}
    for r in rows:
        key = tuple(r[:4])
        if key not in best or r[6] > best[key][6]:
            best[key] = r
    return list(best.values())


def summarise(best: list[list[Any]]) -> list[list[Any]]:
    """[mixer, d_model, state_size at the longest setting, cells, mean best accuracy]."""
    groups: dict[tuple, list[list[Any]]] = {}
    for r in best:
        groups.setdefault((r[0], r[1]), []).append(r)
    return [
        [m, d, max(r[9] for r in rs), len(rs), math.fsum(r[6] for r in rs) / len(rs)]
        for (m, d), rs in groups.items()
    ]


def plot(summary: list[list[Any]]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for mixer in dict.fromkeys(s[0] for s in summary):
        pts = sorted((s[2], s[4]) for s in summary if s[0] == mixer)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mixer)
    ax.set_xscale("log")
    ax.set_xlabel("state size per layer")
    ax.set_ylabel("mean MQAR accuracy (best lr)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
