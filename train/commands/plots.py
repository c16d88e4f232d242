"""The run's pictures: `loss.png` from metrics.csv (every logged step raw and light, an exponential
moving average over it, stage boundaries, and the validation loss from eval.csv when there is one).
Matplotlib is imported here only, with the file-only Agg backend."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write a PNG under a temporary name beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process: ranks may race
    fig.tight_layout()
    fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
    os.replace(tmp, path)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def smooth(values: list[float], alpha: float) -> list[float]:
    """Exponential moving average with the bias of its zero start removed."""
    out, ema = [], 0.0
    for i, v in enumerate(values, 1):
        ema = alpha * ema + (1 - alpha) * v
        out.append(ema / (1 - alpha**i))
    return out


def loss_points(metrics_csv: Path) -> tuple[list[int], list[float], list[int]]:
    """(tokens, loss) of every logged step, in order, a step logged twice (before a kill and
    after the resume) keeping its last value; and the tokens at which each later stage began."""
    by_step: dict[tuple[int, int], tuple[int, float]] = {}
    for r in _rows(metrics_csv):
        if r.get("loss"):
            by_step[(int(r["stage"]), int(r["step"]))] = (int(r["tokens"]), float(r["loss"]))
    keys = sorted(by_step)
    tokens = [by_step[k][0] for k in keys]
    loss = [by_step[k][1] for k in keys]
    starts = [by_step[k][0] for prev, k in zip(keys, keys[1:]) if k[0] != prev[0]]
    return tokens, loss, starts


def plot_loss_curve(metrics_csv: Path, out_png: Path, eval_csv: Path | None = None) -> dict[str, int]:
    """Training loss against tokens: every logged step (light), its moving average, stage
    boundaries, and the validation loss from `eval_csv` (default: eval.csv beside metrics.csv).
    Returns how many points each series has (nothing is drawn without a logged loss)."""
    tokens, loss, starts = loss_points(metrics_csv)
    if not tokens:
        return {}
    eval_csv = eval_csv if eval_csv is not None else metrics_csv.with_name("eval.csv")
    val = sorted(
        (int(r["tokens"]), float(r["value"])) for r in _rows(eval_csv) if r.get("metric") == "val_loss"
    )
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(tokens, loss, color="tab:blue", alpha=0.25, lw=0.8, label="train loss (each logged step)")
    alpha = min(0.98, 1 - 1 / max(len(loss) / 40, 1))
    ax.plot(tokens, smooth(loss, alpha), color="tab:blue", lw=1.8, label="train loss (smoothed)")
    if val:
        ax.plot([t for t, _ in val], [v for _, v in val], "o-", color="tab:orange", label="validation loss")
    for i, t in enumerate(starts):
        ax.axvline(t, color="gray", ls="--", lw=0.8, label="stage boundary" if i == 0 else None)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out_png)
    return {"steps": len(tokens), "validation": len(val), "stage_boundaries": len(starts)}
