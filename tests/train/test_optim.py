"""Parameter groups, the L2Wrap regulariser, segment-wise training and gradient checkpointing."""

from __future__ import annotations

from pathlib import Path

import torch

from skein.rwkv import build_model
from skein.train.config import load_config
from skein.train.losses import lm_loss
from skein.train.optim import param_groups
from skein.train.run import train_from_config
from skein.train.strategy import apply_grad_checkpointing
from tests.models.harness import random_tokens
from tests.train.helpers import losses, tiny_run, write_config
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
