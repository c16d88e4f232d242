"""The state-tracking suite (DeltaProduct paper): word problems on finite groups. A model is
trained to output the running product of a sequence of group elements at length train_len and
tested at test_len; accuracy is reported per position, so one sees where it stops generalising.

Writes accuracy_by_position.csv (group, position, accuracy), results.json and
accuracy_by_position.png (one curve per group, the training length marked).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from skein.data.groups import GROUPS, group_table, word_problems
from skein.rwkv.models import build_model, model_config_from_dict
from skein.train.eval.common import pick_device
from skein.train.eval.fit import FitConfig, accuracy, fit
from skein.train.eval.models import LogitsOnly
from skein.train.eval.output import ResultsDir, results_path, table
from skein.train.typed import ConfigError

DELTAPRODUCT_S3 = {
    "arch": "deltaproduct",
    "n_layer": 1,
    "d_model": 128,
    "n_head": 8,
    "n_householder": 2,
    "allow_neg_eigval": True,
    "use_gate": False,
}
"""The default model: one DeltaProduct layer with 8 heads, n_h = 2, negative eigenvalues."""


def state(
    output: str | None = None,
    groups: list[str] | None = None,
    model: dict[str, Any] | None = None,
    train_len: int = 128,
    test_len: int = 512,
    num_train: int | None = None,
    num_test: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 2048,
    epochs: int = 100,
    weight_decay: float | None = None,
    run_minutes: float | None = None,
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
    setup: str = "skein",
    weights: str | None = None,
) -> dict[str, Any]:
    """Word problems on S3, S5, A5, Z60: train at train_len, accuracy per position up to test_len.

    Args:
        output: results directory (new or empty; default runs/eval/state).
        groups: any of S3, S5, A5, Z60 (default: all four).
        model: model config keys over the default (one DeltaProduct layer, 8 heads, n_h = 2,
            negative eigenvalues); with another `arch`, only n_layer and d_model are kept from it.
            vocab_size is set to the group's order.
        train_len: length of the training sequences.
        test_len: length of the test sequences.
        num_train: training sequences per group (default 100,000; paper: 99,000 distinct).
        num_test: test sequences per group (default 2,000; paper: 1,000).
        lr: peak learning rate (linear warmup, cosine decay).
        batch_size: sequences per step.
        epochs: passes over the training set.
        weight_decay: AdamW weight decay of the matrices (default 0.1; the paper setup's is 1e-6).
        run_minutes: training time budget of each run; its step count (and cosine schedule)
            shrinks to fit after a few timed steps.
        quick: a CPU-sized run of minutes (S3 and Z60, small data, few epochs).
        device: auto (CUDA when present), cpu, cuda, ...
        seed: seed of the data and of the initialisation.
        progress: show a progress bar.
        setup: skein (the default: skein's model and training, per-position accuracy) or paper
            (DeltaProduct's published setup point by point, sequence accuracy; train/eval/paper.py).
        weights: the paper setup's weights while training: bf16 (the published code's, the
            default) or fp32 (float32 weights and optimizer state).
    """
    if setup not in ("skein", "paper"):
        raise ConfigError(f"--setup {setup!r}: skein or paper")
    paper = setup == "paper"
    if weights is not None and not paper:
        raise ConfigError(
            f"--weights {weights}: only with --setup paper (skein's setup trains float32 weights)"
        )
    if weights not in (None, "bf16", "fp32"):
        raise ConfigError(f"--weights {weights!r}: bf16 or fp32")
    num_train = num_train or (99_000 if paper else 100_000)
    num_test = num_test or (1_000 if paper else 2_000)
    model = dict(model or {})
    arch = model.get("arch", DELTAPRODUCT_S3["arch"])
    if quick:
        groups = groups or ["S3", "Z60"]
        train_len, test_len = min(train_len, 16), min(test_len, 64)
        num_train, num_test = min(num_train, 512), min(num_test, 64)
        batch_size, epochs = min(batch_size, 64), min(epochs, 3)
        model = {"d_model": 32, **({"n_head": 2} if arch == DELTAPRODUCT_S3["arch"] else {}), **model}
    groups = groups or list(GROUPS)
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ConfigError(f"--groups: unknown {unknown}; choose from {sorted(GROUPS)}")
    if not 0 < train_len <= test_len:
        raise ConfigError(f"--train_len {train_len} must be positive and at most --test_len {test_len}")
    if arch == DELTAPRODUCT_S3["arch"]:
        spec = {**DELTAPRODUCT_S3, **model}
    else:  # another architecture keeps only the size of the default
        spec = {"n_layer": DELTAPRODUCT_S3["n_layer"], "d_model": DELTAPRODUCT_S3["d_model"], **model}
    out = ResultsDir(results_path("state", output))
    dev = pick_device(device)
    if paper:
        from skein.train.eval.paper import state_paper, state_training

        training = state_training(
            lr, epochs, batch_size, max_seconds=None if run_minutes is None else 60 * run_minutes
        )
        if weight_decay is not None:
            training = replace(training, weight_decay=weight_decay)
        training = replace(training, bf16_weights=weights != "fp32")
        r = state_paper(
            out, groups, model, train_len, test_len, num_train, num_test, training, dev, seed, progress
        )
        print(f"results: {out.path}")
        return r
    weight_decay = 0.1 if weight_decay is None else weight_decay
    out.json(
        "args.json",
        {"groups": groups, "model": spec, "train_len": train_len, "test_len": test_len,
         "num_train": num_train, "num_test": num_test, "lr": lr, "batch_size": batch_size,
         "epochs": epochs, "weight_decay": weight_decay, "run_minutes": run_minutes, "device": str(dev), "seed": seed},
    )  # fmt: skip
    rows, per_group = [], {}
    for g in groups:
        tbl = group_table(g)
        try:
            cfg = model_config_from_dict({**spec, "vocab_size": tbl.shape[0]})
        except ValueError as e:
            raise ConfigError(f"--model: {e}") from e
        torch.manual_seed(seed)
        net = build_model(cfg)
        lm = LogitsOnly(net)
        train = word_problems(tbl, num_train, train_len, seed)
        test = word_problems(tbl, num_test, test_len, seed + 1)
        fit_cfg = FitConfig(
            lr=lr,
            epochs=epochs,
            batch_size=batch_size,
            weight_decay=weight_decay,
            max_seconds=None if run_minutes is None else 60 * run_minutes,
        )
        r = fit(lm, train, test, fit_cfg, dev, seed, desc=g, progress=progress)
        correct, counted = r["per_position"]
        by_pos = (correct / counted).tolist()
        rows += [[g, t + 1, a] for t, a in enumerate(by_pos)]
        per_group[g] = {
            "order": tbl.shape[0],
            "train_loss": r["train_loss"],
            "epochs": r["epochs"],
            "steps": r["steps"],
            "planned_steps": r["planned_steps"],
            "accuracy": accuracy(correct, counted),
            "accuracy_within_train_len": accuracy(correct[:train_len], counted[:train_len]),
            "accuracy_beyond_train_len": accuracy(correct[train_len:], counted[train_len:])
            if test_len > train_len
            else None,
            "accuracy_at_test_len": by_pos[-1],
        }
        out.csv("accuracy_by_position.csv", ["group", "position", "accuracy"], rows)
        print(
            f"{g}: accuracy {per_group[g]['accuracy']:.4f}, {r['steps']}/{r['planned_steps']} steps",
            flush=True,
        )
    out.figure("accuracy_by_position.png", plot(rows, train_len))
    results = {"model": spec, "groups": per_group}
    out.json("results.json", results)
    header = ["group", "order", "acc<=train_len", "acc>train_len", "acc@test_len"]
    print(table(header, [[g, v["order"], v["accuracy_within_train_len"], v["accuracy_beyond_train_len"],
                          v["accuracy_at_test_len"]] for g, v in per_group.items()]))  # fmt: skip
    print(f"results: {out.path}")
    return results


def plot(rows: list[list[Any]], train_len: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for g in dict.fromkeys(r[0] for r in rows):
        pts = [(r[1], r[2]) for r in rows if r[0] == g]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=g)
    ax.axvline(train_len, color="grey", linestyle="--", label="train length")
    ax.set_xlabel("position")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig
