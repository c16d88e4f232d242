"""Parameter groups, the L2Wrap regulariser, segment-wise training and gradient checkpointing."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from skein.rwkv import build_model
from skein.train.config import load_config
from skein.train.loop.losses import lm_loss
from skein.train.loop.optim import param_groups
from skein.train.loop.run import train_from_config
from skein.train.parallel.blocks import apply_grad_checkpointing
from tests.models.harness import random_tokens
from tests.train.helpers import losses, metric_rows, tiny_run, write_config
from tests.utils import assert_close

RWKV4 = {"arch": "rwkv4", "vocab_size": 97, "n_layer": 2, "d_model": 32}


def test_weight_decay_only_on_matrices_and_multipliers_applied() -> None:
    model = build_model(RWKV4)
    groups = param_groups(model, weight_decay=0.1)
    by_param = {id(p): g for g in groups for p in g["params"]}
    mults = model.lr_multipliers()
    assert mults, "RWKV-4 asks for faster time_decay / time_first"
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        want_decay = p.dim() == 2 and name.endswith(".weight")
        assert (g["weight_decay"] > 0) == want_decay, name
        assert g["lr_mult"] == mults.get(name, 1.0), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_l2wrap_adds_gradient_only_at_the_top_logit() -> None:
    logits = torch.randn(2, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5))
    plain = torch.autograd.grad(lm_loss(logits, targets), logits)[0]
    wrapped_loss = lm_loss(logits, targets, l2wrap=1e-2)
    assert wrapped_loss.item() == lm_loss(logits, targets).item()
    wrapped = torch.autograd.grad(wrapped_loss, logits)[0]
    extra = wrapped - plain
    top, idx = logits.detach().max(-1)
    expected = torch.zeros_like(extra).scatter_(-1, idx[..., None], (top * 1e-2 / 10)[..., None])
    assert_close(extra, expected, 1e-6, "l2wrap gradient")


def test_grad_checkpointing_keeps_gradients_and_names() -> None:
    torch.manual_seed(0)
    a = build_model(RWKV4)
    b = build_model(RWKV4)
    b.load_state_dict(a.state_dict())
    apply_grad_checkpointing(b)
    assert list(a.state_dict()) == list(b.state_dict())
    idx = random_tokens(97)
    for m in (a, b):
        logits, _ = m(idx)
        logits.pow(2).mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert_close(pb.grad, pa.grad, 1e-6, name)


def test_segmented_stage_trains_with_exact_first_loss(corpus: str, tmp_path: Path) -> None:
    """Segments with the state carried give the same loss as the whole sequence at step 1; the
    truncated gradients then still train the model."""
    curves = []
    for name, seg in (("whole", None), ("segments", 16)):
        stage = {"ctx_len": 64, "tokens": 64 * 4 * 8, "micro_bsz": 4, "segment_len": seg}
        cfg = tiny_run(corpus, tmp_path / name, stages=[stage], model={**RWKV4, "vocab_size": 257})
        summary = train_from_config(load_config(write_config(cfg, tmp_path / f"{name}.yaml")))
        assert summary["steps"] == 8
        curves.append(losses(tmp_path / name))
    whole, segs = curves
    assert abs(whole[(0, 1)] - segs[(0, 1)]) < 1e-5
    assert segs[(0, 8)] < segs[(0, 1)] - 0.3


class _GradNorms(L.Callback):
    """The global gradient norm each step: before clipping (callbacks run before the module's
    on_before_optimizer_step) and as the optimizer used it (read in a step post-hook)."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.at_step: list[float] = []
        self.recorded: list[float] = []

    @staticmethod
    def _norm(module: L.LightningModule) -> float:
        return float(
            torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in module.parameters() if p.grad is not None])
            )
        )

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        trainer.optimizers[0].register_step_post_hook(lambda *_: self.at_step.append(self._norm(module)))

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.before.append(self._norm(module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.recorded.append(float(module.grad_norm))


def test_gradients_are_clipped_to_grad_clip_and_the_norm_before_is_logged(
    corpus: str, tmp_path: Path
) -> None:
    clip = 0.05
    cfg = tiny_run(
        corpus,
        tmp_path / "run",
        optim={"grad_clip": clip},
        stages=[{"ctx_len": 32, "tokens": 32 * 4 * 4, "micro_bsz": 4}],
    )
    norms = _GradNorms()
    summary = train_from_config(
        load_config(write_config(cfg, tmp_path / "run.yaml")), extra_callbacks=[norms]
    )
    assert summary["steps"] == 4 and len(norms.at_step) == 4
    assert min(norms.before) > 2 * clip  # the clip really bites on this model
    for before, at_step, recorded in zip(norms.before, norms.at_step, norms.recorded):
        assert abs(at_step - clip) < 1e-3 * clip
        assert abs(recorded - before) < 1e-4 * before
    logged = [float(r["grad_norm"]) for r in metric_rows(tmp_path / "run")]
    assert logged == [pytest.approx(b, rel=1e-5) for b in norms.before]
