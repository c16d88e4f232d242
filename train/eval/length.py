"""The length-extrapolation suite: next-token loss at every position of held-out sequences
several times longer than the training context, for one or more models on one plot. Sequences
are fed in chunks with the state carried between them (RNN mode), so memory does not grow with
the length for the recurrent models (the transformer's state is its key/value cache).

Writes loss_by_position.csv (model, position, loss), results.json (mean loss per window of one
training context) and loss_by_position.png (log-x, smoothed over log-spaced bins).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from skein.rwkv.models import CausalLM
from skein.train.eval.common import autocast, held_out, load, pick_device, run_ctx_len
from skein.train.eval.output import ResultsDir, results_path, table
from skein.train.typed import ConfigError


@torch.no_grad()
def loss_by_position(
    model: CausalLM,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk_len: int,
    device: torch.device,
    precision: str = "auto",
) -> torch.Tensor:
    """Per-token loss [B, T] (float64) of targets y given inputs x [B, T], fed chunk_len tokens at
    a time with the state carried, under the autocast of `precision` (a run's trainer.precision)."""
    state, out = None, []
    for s in range(0, x.shape[1], chunk_len):
        xc, yc = x[:, s : s + chunk_len].to(device), y[:, s : s + chunk_len].to(device)
        with autocast(device, precision):
            logits, state = model(xc, state)
        out.append(F.cross_entropy(logits.float().transpose(1, 2), yc, reduction="none").double().cpu())
    return torch.cat(out, dim=1)


def length(
    models: list[str] | None = None,
    data: list[str] | None = None,
    factor: int = 4,
    ctx_len: int | None = None,
    chunk_len: int | None = None,
    samples: int = 16,
    micro_bsz: int = 4,
    output: str | None = None,
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Loss by token position up to factor x the training context, one curve per model.

    Args:
        models: run directories, checkpoints or exported weights (one curve each).
        data: held-out binidx prefix (or a list of them).
        factor: evaluated length = factor * ctx_len.
        ctx_len: the training context (default: the first model's run config, last stage).
        chunk_len: tokens per forward pass (default: ctx_len).
        samples: number of held-out sequences.
        micro_bsz: sequences per forward pass.
        output: results directory (new or empty; default <run>/eval/length of the first model,
            or runs/eval/length).
        quick: at most 4 sequences.
        device: auto (CUDA when present), cpu, cuda, ...
        seed: seed of the held-out sample order.
        progress: show a progress bar.
    """
    models = list(models or [])
    data = list(data or [])
    if not models:
        raise ConfigError("--models: name at least one run directory, checkpoint or weights file")
    if factor < 1:
        raise ConfigError(f"--factor must be >= 1, got {factor}")
    dev = pick_device(device)
    samples = min(samples, 4) if quick else samples
    out = ResultsDir(results_path("length", output, models[0]))
    names, rows, windows, ds = _names(models), [], {}, None
    for path, name in zip(models, names):
        src = load(path, dev)
        ctx_len = ctx_len or run_ctx_len(src)
        if ctx_len is None:
            raise ConfigError(f"--models {path}: no run config with a ctx_len; pass --ctx_len")
        T = factor * ctx_len  # ctx_len is the first model's for all
        if ds is None:
            ds = held_out(data, T, seed)
        total = torch.zeros(T, dtype=torch.float64)
        for i in tqdm(range(0, samples, micro_bsz), desc=name, disable=not progress, leave=False):
            batch = [ds[n] for n in range(i, min(i + micro_bsz, samples))]
            x, y = torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch])
            total += loss_by_position(src.model, x, y, chunk_len or ctx_len, dev, src.precision()).sum(0)
        per_pos = (total / samples).tolist()
        rows += [[name, t + 1, v] for t, v in enumerate(per_pos)]
        windows[name] = {
            f"{k * ctx_len + 1}-{(k + 1) * ctx_len}": sum(per_pos[k * ctx_len : (k + 1) * ctx_len]) / ctx_len
            for k in range(factor)
        }
        src.model.cpu()
        out.csv("loss_by_position.csv", ["model", "position", "loss"], rows)
    out.figure("loss_by_position.png", plot(rows, ctx_len))
    results = {"models": dict(zip(names, models)), "ctx_len": ctx_len, "length": factor * ctx_len,
               "samples": samples, "mean_loss_by_window": windows}  # fmt: skip
    out.json("args.json", {"models": models, "data": data, "factor": factor, "ctx_len": ctx_len,
                           "chunk_len": chunk_len or ctx_len, "samples": samples, "device": str(dev),
                           "seed": seed})  # fmt: skip
    out.json("results.json", results)
    keys = list(next(iter(windows.values())))
    print(table(["model", *keys], [[n, *w.values()] for n, w in windows.items()]))
    print(f"results: {out.path}")
    return results


def _names(models: list[str]) -> list[str]:
    """Short unique labels: the last path component, numbered when repeated."""
    base = [m.rstrip("/").split("/")[-1] or m for m in models]
    return [b if base.count(b) == 1 else f"{b}#{i}" for i, b in enumerate(base)]


def plot(rows: list[list[Any]], ctx_len: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(r[0] for r in rows):
        loss = torch.tensor([r[2] for r in rows if r[0] == name])
        edges = torch.unique(torch.logspace(0, torch.log10(torch.tensor(len(loss) + 1.0)), 60).long())
        mids, means = [], []
        for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
            mids.append((a * (b - 1)) ** 0.5)
            means.append(float(loss[a - 1 : b - 1].mean()))
        ax.plot(mids, means, label=name)
    ax.axvline(ctx_len, color="grey", linestyle="--", label="training ctx_len")
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("loss (nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
