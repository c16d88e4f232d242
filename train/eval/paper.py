"""The papers' own setups (`--setup paper` of `skein eval state` and `skein eval mqar`), point by
point from the published code, next to skein's own (the default):

State tracking (automl/DeltaProduct state_tracking/, built on jopetty/word-problem): one
DeltaProduct layer of d_model 128 with 8 heads of dim 32 (expand_v 1), no short convolution, no
output gate, no forget gate, a SwiGLU MLP of width 512; the mixer's projections xavier-uniform with
gain 2^-2.5, the MLP's down projection kaiming-uniform / sqrt(2 n_layer) (fla's prenorm rescale),
the rest normal(0.02); bf16 weights; the vocabulary is the group's elements then 7 special tokens
([PAD] [BOS] [UNK] [EOS] [SEP] [CLS] [MASK]), and a BOS token starts both the inputs and the labels
(each label is the running product up to its position: tagging, not next-token prediction).
AdamW on every parameter (lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-6), no warmup,
no clipping, cosine to 0 over all steps, batch 2048, up to 100 epochs; 99,000 distinct training
sequences of length 128, 1,000 test sequences of length 512; stop once the best test sequence
accuracy reaches 0.99. Sequence accuracy at L: the fraction of test sequences whose first L
elements (and the BOS) are all right.

MQAR (HazyResearch/zoology, iclr24 figure 2): token embedding (plus learned absolute positions for
attention only) with dropout 0.1; two blocks, each residual += mixer(LayerNorm(residual)), then
the identity "state mixer" adds LayerNorm(residual) to the residual; final LayerNorm; head tied
to the embedding. Attention: one head, biased qkv and output projections, dropout 0.1 on the
attention weights. Linear and embedding weights normal(0.02), biases 0, output projections
normal(0.02 / sqrt(2 n_layer)) (skein's recurrent mixers keep their own init: zoology has none of
them). float32; AdamW on every parameter (weight decay 0.1, betas (0.9, 0.999)), no warmup, no
clipping, cosine to 0 stepped once per epoch over 64 epochs, stop after an epoch whose test
accuracy exceeds 0.99; the lr sweep logspace(-4, -2, 4); the plotted number is the last epoch's
accuracy at the best lr.

Both report sequence and per-position accuracy, at the final and at the best epoch.
"""

from __future__ import annotations

import inspect
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from skein.data.groups import group_table, word_problems
from skein.data.mqar import IGNORE, MQARSetting, mqar_splits
from skein.rwkv.models import build_model, model_config_from_dict
from skein.train.eval.common import zoology_batch_size
from skein.train.eval.models import MIXERS, LogitsOnly, MixerLM, mixer_spec
from skein.train.eval.output import ResultsDir, table
from skein.train.eval.state_size import state_size
from skein.train.typed import ConfigError

SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[UNK]", "[EOS]", "[SEP]", "[CLS]", "[MASK]")
"""Added after the group elements, in this order, by the published tokenizer."""
XAVIER_GAIN = 2**-2.5

PAPER_STATE_MODEL: dict[str, Any] = {
    "arch": "deltaproduct",
    "n_layer": 1,
    "d_model": 128,
    "n_head": 8,
    "head_k_dim": 32,
    "head_v_dim": 32,
    "n_householder": 2,
    "allow_neg_eigval": True,
    "use_gate": False,
    "use_short_conv": False,
    "use_output_gate": False,
    "d_ffn": 512,
}
"""The published state-tracking model (DeltaProduct_2[-1, 1]; --model overrides any key)."""


@dataclass(frozen=True)
class PaperTraining:
    """How a published setup trains."""

    lr: float
    epochs: int
    batch_size: int
    weight_decay: float
    """AdamW weight decay of every parameter (vectors too)."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_norm: float | None = None
    """Gradient clipping (None: none)."""
    cosine_per: str = "step"
    """step: cosine to 0 over every step; epoch: stepped once per epoch over `epochs`."""
    stop_at: float = 0.99
    stop_strict: bool = False
    """Stop when the stop metric exceeds stop_at (True) or reaches it (False)."""
    stop_on_best: bool = True
    """Compare the best epoch's metric so far (DeltaProduct) or the last one's (zoology)."""
    bf16_weights: bool = False
    """Train bf16 weights (no float32 master copy), as DeltaProduct does; else float32."""
    eval_batch_size: int = 256
    max_seconds: float | None = None
    """Stop after the epoch that crosses this training time (the schedule stays as planned)."""


def state_training(lr: float = 1e-3, epochs: int = 100, batch_size: int = 2048, **kw: Any) -> PaperTraining:
    """DeltaProduct's state-tracking training (README commands: lr 1e-3, batch 2048, 100 epochs,
    --use_scheduler True)."""
    return PaperTraining(lr=lr, epochs=epochs, batch_size=batch_size, weight_decay=1e-6, cosine_per="step",
                         stop_at=0.99, stop_strict=False, stop_on_best=True, bf16_weights=True, **kw)  # fmt: skip


def mqar_training(lr: float, batch_size: int, epochs: int = 64, **kw: Any) -> PaperTraining:
    """Zoology's TrainConfig defaults with figure 2's max_epochs 64."""
    return PaperTraining(lr=lr, epochs=epochs, batch_size=batch_size, weight_decay=0.1, cosine_per="epoch",
                         stop_at=0.99, stop_strict=True, stop_on_best=False, bf16_weights=False, **kw)  # fmt: skip


# ---- state tracking: data and model


def bos_id(order: int) -> int:
    return order + SPECIAL_TOKENS.index("[BOS]")


def with_bos(words: Tensor, products: Tensor, order: int) -> tuple[Tensor, Tensor]:
    """(inputs, labels) [N, 1 + T]: a BOS token before the words and before their running products."""
    bos = torch.full((words.shape[0], 1), bos_id(order), dtype=words.dtype)
    return torch.cat([bos, words], 1), torch.cat([bos, products], 1)


def distinct_rows(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The rows of (x, y) with a first occurrence of their x, in their order."""
    seen, keep = set(), []
    for i, row in enumerate(x.tolist()):
        key = tuple(row)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    idx = torch.tensor(keep, dtype=torch.long)
    return x[idx], y[idx]


def init_state_model(model: nn.Module, n_layer: int) -> None:
    """The published init over skein's: mixer projections xavier-uniform (gain 2^-2.5, per
    Householder step for k, v and beta), the MLP's
    down projection kaiming-uniform(a = sqrt 5) / sqrt(2 n_layer); everything else as built
    (normal(0.02), norms 1)."""
    for block in model.blocks:
        n_h = block.mixer.cfg.n_householder
        for name, module in block.mixer.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            # the published k, v and beta projections are one Linear per Householder step, the
            # rows of skein's (ordered (n_h, ...)): each slice gets its own xavier fan
            parts = n_h if name in ("k_proj", "v_proj", "b_proj") else 1
            with torch.no_grad():
                for w in module.weight.chunk(parts, dim=0):
                    nn.init.xavier_uniform_(w, gain=XAVIER_GAIN)
        down = block.ffn.down.weight
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        with torch.no_grad():
            down /= math.sqrt(2 * n_layer)


def build_state_model(order: int, overrides: dict[str, Any] | None = None) -> nn.Module:
    """The published model for a group of `order` elements: vocabulary order + 7 special tokens."""
    cfg = model_config_from_dict(
        {**PAPER_STATE_MODEL, **(overrides or {}), "vocab_size": order + len(SPECIAL_TOKENS)}
    )
    model = build_model(cfg)
    init_state_model(model, cfg.n_layer)
    return model


# ---- MQAR: zoology's backbone


class ZoologyAttention(nn.Module):
    """Zoology's MHA: biased qkv projection, causal softmax attention with dropout on its
    weights, biased output projection."""

    def __init__(self, d_model: int, num_heads: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.Wqkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.Wqkv(x).view(B, T, 3, self.num_heads, C // self.num_heads).unbind(2)
        scores = torch.einsum("bthd,bshd->bhts", q, k / math.sqrt(C // self.num_heads))
        scores = scores + torch.triu(torch.full((T, T), -10000.0, device=x.device), 1).to(scores.dtype)
        weights = F.dropout(torch.softmax(scores, dim=-1), self.dropout if self.training else 0.0)
        return self.out_proj(torch.einsum("bhts,bshd->bthd", weights, v).reshape(B, T, C))


class ZoologyLM(nn.Module):
    """forward(idx [B, T]) -> logits [B, T, vocab], zoology's TransformerBlock backbone with the
    identity state mixer; `mixer` is attention (zoology's) or a MIXERS name (skein's)."""

    def __init__(self, mixer: str, vocab_size: int, n_layer: int, d_model: int, seq_len: int) -> None:
        super().__init__()
        self.attention = mixer == "attention"
        self.emb = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(seq_len, d_model) if self.attention else None
        self.drop = nn.Dropout(0.1)
        self.norms1 = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layer))
        self.norms2 = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        if self.attention:
            self.mixers = nn.ModuleList(ZoologyAttention(d_model) for _ in range(n_layer))
            self.config = None
        else:
            skein = MixerLM(mixer_spec(mixer, d_model), vocab_size, n_layer, d_model)
            self.mixers, self.config = skein.mixers, skein.config
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self._init(n_layer)
        self.head.weight = self.emb.weight  # tied

    def _init(self, n_layer: int) -> None:
        own = [
            self.emb,
            *([self.pos] if self.pos is not None else []),
            *(self.mixers if self.attention else []),
        ]
        for part in own:
            for module in part.modules():
                if isinstance(module, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(module.weight, std=0.02)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.attention:  # zoology: std 0.02 / sqrt(2 n_layers) on every out_proj
            for m in self.mixers:
                nn.init.normal_(m.out_proj.weight, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx: Tensor) -> Tensor:
        x = self.emb(idx)
        if self.pos is not None:
            x = x + self.pos(torch.arange(idx.shape[1], device=idx.device))
        residual, hidden, v_first = None, self.drop(x), x.new_empty(0)
        for norm1, norm2, mixer in zip(self.norms1, self.norms2, self.mixers):
            residual = hidden if residual is None else hidden + residual
            hidden, v_first = _mix(mixer, norm1(residual), v_first)
            residual = hidden + residual
            hidden = norm2(residual)  # the identity state mixer
        return self.head(self.ln_f(hidden + residual))


def _mix(mixer: nn.Module, h: Tensor, v_first: Tensor) -> tuple[Tensor, Tensor]:
    """One mixer call: (x) for attention, (x, state) for skein's mixers, (x, v_first, shift, wkv)
    for those that thread the first layer's values (RWKV-7)."""
    if isinstance(mixer, ZoologyAttention):
        return mixer(h), v_first
    if "v_first" in inspect.signature(mixer.forward).parameters:
        out, v_first, _, _ = mixer(h, v_first, None, None)
        return out, v_first
    return mixer(h, None)[0], v_first


# ---- training and metrics


@torch.no_grad()
def predictions(model: nn.Module, inputs: Tensor, batch_size: int, device: torch.device, cast: Any) -> Tensor:
    """argmax predictions [N, T] on the CPU."""
    model.eval()
    out = []
    for i in range(0, len(inputs), batch_size):
        with cast:
            out.append(model(inputs[i : i + batch_size].to(device)).argmax(-1).cpu())
    model.train()
    return torch.cat(out)


def metrics(pred: Tensor, labels: Tensor, prefix_lengths: dict[str, int] | None = None) -> dict[str, float]:
    """token_accuracy: right labelled positions / labelled positions; sequence_accuracy: sequences
    with every labelled position right; sequence_accuracy_<name>: the same over the first L
    positions only (prefix_lengths name -> L, L counted with the BOS)."""
    mask = labels != IGNORE
    right = (pred == labels) | ~mask
    out = {
        "token_accuracy": float(((pred == labels) & mask).sum().double() / mask.sum().clamp_min(1)),
        "sequence_accuracy": float(right.all(1).double().mean()),
    }
    for name, L in (prefix_lengths or {}).items():
        out[f"sequence_accuracy_{name}"] = float(right[:, :L].all(1).double().mean())
    return out


def best_epoch(history: list[dict[str, float]], stop_key: str) -> int:
    """The index of the best epoch: highest `stop_key`, ties (e.g. a sequence accuracy still 0
    everywhere) broken by token accuracy, then by the later epoch."""
    return max(range(len(history)), key=lambda e: (history[e][stop_key], history[e]["token_accuracy"], e))


def train_paper(
    model: nn.Module,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    cfg: PaperTraining,
    device: torch.device,
    seed: int,
    stop_key: str,
    prefix_lengths: dict[str, int] | None = None,
    desc: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Train as the published code does (see PaperTraining) and score the test set after every
    epoch. Returns the final and the best epoch's metrics (best_epoch), the epochs and steps
    run, and the last training loss."""
    model.to(device).train()
    if cfg.bf16_weights:
        model.to(torch.bfloat16)
    cast = nullcontext()  # neither source trains under autocast
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                            weight_decay=cfg.weight_decay)  # fmt: skip
    inputs, labels = train
    steps_per_epoch = math.ceil(len(inputs) / cfg.batch_size)
    t_max = cfg.epochs * steps_per_epoch if cfg.cosine_per == "step" else cfg.epochs
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max, eta_min=0.0)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    step, loss, started = 0, torch.tensor(float("nan")), time.monotonic()
    bar = tqdm(total=cfg.epochs * steps_per_epoch, desc=desc, disable=not progress, leave=False)
    for _ in range(cfg.epochs):
        order = torch.randperm(len(inputs), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x, y = inputs[idx].to(device), labels[idx].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            if cfg.cosine_per == "step":
                sched.step()
            step += 1
            bar.update()
        m = metrics(predictions(model, test[0], cfg.eval_batch_size, device, cast), test[1], prefix_lengths)
        history.append(m)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}", **{stop_key: f"{m[stop_key]:.3f}"})
        watched = max(h[stop_key] for h in history) if cfg.stop_on_best else m[stop_key]
        if watched > cfg.stop_at or (not cfg.stop_strict and watched >= cfg.stop_at):
            break
        if cfg.max_seconds is not None and time.monotonic() - started > cfg.max_seconds:
            break
        if cfg.cosine_per == "epoch":
            sched.step()
    bar.close()
    best = best_epoch(history, stop_key)
    return {"final": history[-1], "best": history[best], "best_epoch": best + 1, "epochs": len(history),
            "steps": step, "train_loss": float(loss.detach()), "seconds": time.monotonic() - started}  # fmt: skip


# ---- the suites in the published setups


def state_paper(
    out: ResultsDir,
    groups: list[str],
    model: dict[str, Any],
    train_len: int,
    test_len: int,
    num_train: int,
    num_test: int,
    training: PaperTraining,
    device: torch.device,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """Word problems in DeltaProduct's setup: per group, sequence accuracy at train_len and
    test_len and per-position accuracy, final and best epoch; writes accuracy_by_length.csv
    (group, length, final sequence accuracy) and results.json."""
    out.json("args.json", {"setup": "paper", "groups": groups, "model": {**PAPER_STATE_MODEL, **model},
                           "train_len": train_len, "test_len": test_len, "num_train": num_train,
                           "num_test": num_test, "training": training.__dict__, "device": str(device),
                           "seed": seed})  # fmt: skip
    per_group, rows = {}, []
    for g in groups:
        tbl = group_table(g)
        order = tbl.shape[0]
        torch.manual_seed(seed)
        try:
            net = LogitsOnly(build_state_model(order, model))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"--model {model}: {e} (the paper setup is one DeltaProduct layer)") from e
        train = distinct_rows(*with_bos(*word_problems(tbl, num_train, train_len, seed), order))
        test = with_bos(*word_problems(tbl, num_test, test_len, seed + 1), order)
        lengths = {str(train_len): train_len + 1, str(test_len): test_len + 1}
        r = train_paper(net, train, test, training, device, seed, "sequence_accuracy", lengths, g, progress)
        per_group[g] = {"order": order, "num_train": len(train[0]), **r}
        pred = predictions(net, test[0], training.eval_batch_size, device, nullcontext())
        right = (pred == test[1]).cumprod(1).double().mean(0)  # sequences right up to each length
        rows += [[g, L, float(right[L])] for L in range(1, test_len + 1)]
        out.csv("accuracy_by_length.csv", ["group", "length", "sequence_accuracy"], rows)
        print(f"{g}: sequence accuracy @{train_len} {r['final'][f'sequence_accuracy_{train_len}']:.4f}, "
              f"@{test_len} {r['final'][f'sequence_accuracy_{test_len}']:.4f} after {r['epochs']} epochs",
              flush=True)  # fmt: skip
    results = {"setup": "paper", "model": {**PAPER_STATE_MODEL, **model}, "groups": per_group}
    out.json("results.json", results)
    header = ["group", "epochs", f"seq@{train_len}", f"seq@{test_len}", "token_acc", f"best seq@{test_len}",
              "best_epoch"]  # fmt: skip
    print(table(header, [[g, v["epochs"], v["final"][f"sequence_accuracy_{train_len}"],
                          v["final"][f"sequence_accuracy_{test_len}"], v["final"]["token_accuracy"],
                          v["best"][f"sequence_accuracy_{test_len}"], v["best_epoch"]]
                         for g, v in per_group.items()]))  # fmt: skip
    return results


MQAR_HEADER = ["mixer", "d_model", "seq_len", "kv_pairs", "lr", "final_accuracy", "final_sequence_accuracy",
               "best_accuracy", "best_sequence_accuracy", "best_epoch", "epochs", "steps", "state_size",
               "params"]  # fmt: skip


def mqar_paper(
    out: ResultsDir,
    mixers: list[str],
    d_models: list[int],
    cells: list[MQARSetting],
    lrs: list[float],
    n_layer: int,
    num_train: int,
    num_test: int,
    epochs: int,
    batch_size: int | None,
    max_seconds: float | None,
    device: torch.device,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    """MQAR in zoology's figure-2 setup: every mixer, d_model, cell and lr; the best lr per cell by
    the final epoch's accuracy (what the figure plots). Writes cells.csv, best.csv, results.json."""
    for m in mixers:
        if m != "attention" and (m not in MIXERS):
            raise ConfigError(f"--mixers {m!r}: the paper setup takes attention or {sorted(set(MIXERS) - {'attention'})}"
                              " (zoology's backbone has no shared short convolution)")  # fmt: skip
    out.json("args.json", {"setup": "paper", "mixers": mixers, "d_models": d_models,
                           "settings": [c.__dict__ for c in cells], "lrs": lrs, "n_layer": n_layer,
                           "num_train": num_train, "num_test": num_test, "epochs": epochs,
                           "batch_size": batch_size, "device": str(device), "seed": seed})  # fmt: skip
    rows = []
    for cell in cells:
        data = mqar_splits(cell, num_train, num_test, seed)
        for mixer in mixers:
            for d in d_models:
                for lr in lrs:
                    name = f"{mixer} d{d} {cell.seq_len}:{cell.num_kv_pairs} lr{lr:.1e}"
                    torch.manual_seed(seed)
                    net = ZoologyLM(mixer, cell.vocab_size, n_layer, d, cell.seq_len)
                    bs = batch_size or zoology_batch_size(cell.seq_len)
                    cfg = mqar_training(lr, bs, epochs, max_seconds=max_seconds)
                    r = train_paper(net, *data, cfg, device, seed, "token_accuracy", None, name, progress)
                    size = (
                        2 * d * cell.seq_len if net.config is None else state_size(net.config, cell.seq_len)
                    )
                    params = sum(p.numel() for p in net.parameters())
                    rows.append([mixer, d, cell.seq_len, cell.num_kv_pairs, lr, r["final"]["token_accuracy"],
                                 r["final"]["sequence_accuracy"], r["best"]["token_accuracy"],
                                 r["best"]["sequence_accuracy"], r["best_epoch"], r["epochs"], r["steps"], size,
                                 params])  # fmt: skip
                    out.csv("cells.csv", MQAR_HEADER, rows)
                    print(f"{name}: final accuracy {r['final']['token_accuracy']:.4f} (best "
                          f"{r['best']['token_accuracy']:.4f} at epoch {r['best_epoch']}), {r['epochs']} epochs",
                          flush=True)  # fmt: skip
    best: dict[tuple, list[Any]] = {}
    for r in rows:
        key = tuple(r[:4])
        if key not in best or r[5] > best[key][5]:
            best[key] = r
    out.csv("best.csv", MQAR_HEADER, list(best.values()))
    results = {"setup": "paper", "cells": [dict(zip(MQAR_HEADER, r)) for r in rows],
               "best": [dict(zip(MQAR_HEADER, r)) for r in best.values()]}  # fmt: skip
    out.json("results.json", results)
    print(table(["mixer", "d_model", "seq_len", "kv_pairs", "best lr", "final_acc", "final_seq_acc", "best_acc"],
                [[*r[:5], r[5], r[6], r[7]] for r in best.values()]))  # fmt: skip
    return results
