"""`--setup paper`: the models, data, training and metrics are the published ones (DeltaProduct's
state tracking, zoology's figure-2 MQAR), checked piece by piece on the CPU."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from skein.data.groups import group_table, running_products, word_problems
from skein.data.mqar import IGNORE
from skein.train.cli import main
from skein.train.eval.models import LogitsOnly
from skein.train.eval.paper import (
    ZoologyAttention,
    ZoologyLM,
    best_epoch,
    build_state_model,
    metrics,
    mqar_training,
    predictions,
    state_training,
    train_paper,
    with_bos,
)


def _uniform_bound_and_std(w: torch.Tensor, bound: float) -> None:
    """w looks uniform on [-bound, bound]: inside it, with the std bound / sqrt 3 (within 10%)."""
    w = w.detach()
    assert w.abs().max() <= bound
    assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)


def test_state_model_is_the_published_one() -> None:
    torch.manual_seed(0)
    model = build_state_model(6)
    c = model.config
    assert (c.arch, c.n_layer, c.d_model, c.n_head, c.head_k_dim, c.head_v_dim) == (
        "deltaproduct",
        1,
        128,
        8,
        32,
        32,
    )
    assert (
        not c.use_short_conv and not c.use_output_gate and not c.use_gate
    )  # no conv, no output or forget gate
    assert c.n_householder == 2 and c.allow_neg_eigval
    assert c.vocab_size == 6 + 7 and c.d_ffn == 512  # group elements + 7 special tokens; MLP 512
    mixer = model.blocks[0].mixer
    assert not any(isinstance(m, nn.Conv1d) for m in mixer.modules()) and not hasattr(mixer, "g_proj")
    # xavier-uniform, gain 2^-2.5; k, v and beta: one published Linear per Householder step (n_h = 2)
    for name, steps in (("q_proj", 1), ("k_proj", 2), ("v_proj", 2), ("b_proj", 2), ("o_proj", 1)):
        w = getattr(mixer, name).weight
        fan_out, fan_in = w.shape[0] // steps, w.shape[1]
        for part in w.chunk(steps, dim=0):
            _uniform_bound_and_std(part, 2**-2.5 * math.sqrt(6 / (fan_in + fan_out)))
    down = model.blocks[0].ffn.down.weight  # kaiming-uniform(a = sqrt 5) / sqrt(2 n_layer)
    _uniform_bound_and_std(down, 1 / math.sqrt(down.shape[1]) / math.sqrt(2))
    assert float(model.emb.weight.detach().std()) == pytest.approx(0.02, rel=0.1)


def test_bos_starts_inputs_and_labels() -> None:
    tbl = group_table("S3")
    words, products = word_problems(tbl, 5, 9, seed=3)
    x, y = with_bos(words, products, 6)
    assert x.shape == y.shape == (5, 10)
    assert (x[:, 0] == 7).all() and (y[:, 0] == 7).all()  # [BOS] follows [PAD] after the 6 elements
    assert torch.equal(x[:, 1:], words) and torch.equal(y[:, 1:], running_products(tbl, words))


def test_sequence_accuracy_by_hand() -> None:
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 6, (4, 6), generator=g)
    pred = labels.clone()
    pred[0, 5] = (labels[0, 5] + 1) % 6  # sequence 0: wrong only at the last position
    pred[1, 2] = (labels[1, 2] + 1) % 6  # sequence 1: wrong at position 2
    pred[2, 1] = (labels[2, 1] + 3) % 6  # sequence 2: wrong at position 1 ...
    labels[2, 1] = IGNORE  # ... which is not labelled, so it does not count
    m = metrics(pred, labels, {"3": 3, "6": 6})
    assert m["sequence_accuracy"] == 2 / 4  # sequences 2 and 3
    assert m["sequence_accuracy_3"] == 3 / 4  # the first 3 positions: only sequence 1 fails
    assert m["sequence_accuracy_6"] == 2 / 4
    assert m["token_accuracy"] == (23 - 2) / 23  # 23 labelled positions, 2 wrong


def test_state_training_settings() -> None:
    t = state_training()
    assert (t.lr, t.epochs, t.batch_size) == (1e-3, 100, 2048)
    assert t.weight_decay == 1e-6 and t.betas == (0.9, 0.999) and t.eps == 1e-8
    assert t.clip_norm is None and t.cosine_per == "step" and t.bf16_weights
    assert t.stop_at == 0.99 and not t.stop_strict and t.stop_on_best
    z = mqar_training(1e-3, 512)
    assert z.weight_decay == 0.1 and z.betas == (0.9, 0.999) and z.clip_norm is None and z.epochs == 64
    assert z.cosine_per == "epoch" and z.stop_strict and not z.stop_on_best and not z.bf16_weights


def _record_steps(monkeypatch: pytest.MonkeyPatch) -> list[list[tuple[float, float, int, set[torch.dtype]]]]:
    """(lr, weight_decay, parameter count, parameter dtypes) of every param group at every optimizer
    step; fails on any gradient clipping."""
    seen: list[list[tuple[float, float, int, set[torch.dtype]]]] = []
    step = torch.optim.AdamW.step

    def recording(self, *a, **k):
        seen.append(
            [
                (g["lr"], g["weight_decay"], len(g["params"]), {p.dtype for p in g["params"]})
                for g in self.param_groups
            ]
        )
        return step(self, *a, **k)

    def no_clip(*a, **k):
        raise AssertionError("gradients were clipped")

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", no_clip)
    return seen


def test_paper_training_no_warmup_no_clipping_decay_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_steps(monkeypatch)
    tbl = group_table("S3")
    train = with_bos(*word_problems(tbl, 40, 6, seed=1), 6)
    test = with_bos(*word_problems(tbl, 16, 8, seed=2), 6)
    torch.manual_seed(0)
    model = LogitsOnly(build_state_model(6, {"d_model": 32, "n_head": 2, "d_ffn": 64}))
    cfg = state_training(lr=2e-3, epochs=3, batch_size=16)
    r = train_paper(
        model, train, test, cfg, torch.device("cpu"), 0, "sequence_accuracy", {"6": 7}, progress=False
    )
    n_params = len(list(model.parameters()))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # bf16 weights
    assert r["steps"] == len(seen) == 9 and r["epochs"] == 3
    assert [groups for groups in seen if len(groups) != 1] == []  # one group: every parameter decayed
    assert all(g[0][1] == 1e-6 and g[0][2] == n_params for g in seen)
    lrs = [g[0][0] for g in seen]
    expected = [2e-3 * (1 + math.cos(math.pi * s / 9)) / 2 for s in range(9)]  # cosine over steps, from lr
    assert lrs == pytest.approx(expected, rel=1e-9)
    # the final epoch's metrics are the trained model's
    again = metrics(predictions(model, test[0], 256, torch.device("cpu"), torch.no_grad()), test[1], {"6": 7})
    assert again == pytest.approx(r["final"])
    assert r["best"]["sequence_accuracy"] >= r["final"]["sequence_accuracy"]


def test_best_epoch_breaks_ties_by_token_accuracy() -> None:
    """A long state run can end with sequence accuracy 0 at every epoch: the best epoch is then
    the one with the most positions right, not the first."""
    rng = random.Random(5)
    history = [{"sequence_accuracy_512": 0.0, "token_accuracy": rng.uniform(0.15, 0.4)} for _ in range(9)]
    top = max(range(9), key=lambda e: history[e]["token_accuracy"])
    assert best_epoch(history, "sequence_accuracy_512") == top
    history[2]["sequence_accuracy_512"] = 0.004  # any sequence accuracy outranks token accuracy
    assert best_epoch(history, "sequence_accuracy_512") == 2
    history[6] = dict(history[2])  # an exact tie: the later epoch
    assert best_epoch(history, "sequence_accuracy_512") == 6


def test_zoology_cosine_is_stepped_per_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _record_steps(monkeypatch)
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 32, (24, 16), generator=g)
    y = torch.where(
        torch.rand(24, 16, generator=g) < 0.3, torch.randint(0, 32, (24, 16), generator=g), IGNORE
    )
    torch.manual_seed(0)
    model = ZoologyLM("attention", 32, 2, 16, 16)
    cfg = mqar_training(1e-2, batch_size=8, epochs=4)
    r = train_paper(
        model, (x, y), (x[:8], y[:8]), cfg, torch.device("cpu"), 0, "token_accuracy", progress=False
    )
    assert r["epochs"] == 4 or r["final"]["token_accuracy"] > 0.99
    lrs = [s[0][0] for s in seen]
    expected = [
        1e-2 * (1 + math.cos(math.pi * (i // 3) / 4)) / 2 for i in range(len(lrs))
    ]  # 3 steps an epoch
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert all(s[0][1] == 0.1 for s in seen)


def test_zoology_backbone() -> None:
    torch.manual_seed(0)
    att = ZoologyLM("attention", 64, 2, 32, 24)
    (m0, m1) = att.mixers
    assert isinstance(m0, ZoologyAttention) and m0.num_heads == 1 and m0.dropout == 0.1
    assert att.pos.weight.shape == (24, 32) and att.drop.p == 0.1  # learned absolute positions
    assert att.head.weight is att.emb.weight  # tied
    assert m0.Wqkv.bias is not None and float(m0.Wqkv.bias.detach().abs().max()) == 0.0
    assert float(m0.Wqkv.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    assert float(m0.out_proj.weight.detach().std()) == pytest.approx(
        0.02 / math.sqrt(2 * 2), rel=0.1
    )  # 2 layers
    assert ZoologyLM("rwkv7", 64, 2, 32, 24).pos is None  # positions for attention only
    # causal: changing later tokens leaves earlier logits alone; positions matter
    att.eval()
    x = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    x2 = x.clone()
    x2[:, 12:] = (x2[:, 12:] + 1) % 64
    with torch.no_grad():
        a, b = att(x), att(x2)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-5) and not torch.allclose(a[:, 12:], b[:, 12:])
    # the identity state mixer: residual += LayerNorm(residual) after every mixer
    r = att.drop(att.emb(x) + att.pos(torch.arange(24)))
    for n1, n2, m in zip(att.norms1, att.norms2, att.mixers):
        r = r + m(n1(r))
        r = r + n2(r)
    with torch.no_grad():
        assert torch.allclose(att(x), att.head(att.ln_f(r)), atol=1e-5)


def test_paper_setups_write_both_metrics(tmp_path: Path) -> None:
    out = tmp_path / "state"
    main(["eval", "state", "--setup", "paper", "--quick", "true", "--groups+", "S3", "--epochs", "1",
          "--num_train", "64", "--device", "cpu", "--progress", "false", "--output", str(out)])  # fmt: skip
    r = json.loads((out / "results.json").read_text())["groups"]["S3"]
    for when in ("final", "best"):
        assert {"sequence_accuracy_16", "sequence_accuracy_64", "token_accuracy"} <= set(r[when])
    assert (
        r["num_train"] == 64
        and json.loads((out / "args.json").read_text())["training"]["weight_decay"] == 1e-6
    )
    out = tmp_path / "mqar"
    main(["eval", "mqar", "--setup", "paper", "--quick", "true", "--mixers+", "attention", "--lrs", "0.01",
          "0.003", "--epochs", "1", "--num_train", "128", "--device", "cpu", "--progress", "false",
          "--output", str(out)])  # fmt: skip
    res = json.loads((out / "results.json").read_text())
    assert len(res["cells"]) == 2 and len(res["best"]) == 1
    assert res["best"][0]["final_accuracy"] == max(c["final_accuracy"] for c in res["cells"])
    assert {"final_sequence_accuracy", "best_accuracy", "best_sequence_accuracy"} <= set(res["best"][0])
    with pytest.raises(SystemExit):
        main(
            ["eval", "mqar", "--setup", "paper", "--mixers+", "rwkv7_conv4", "--output", str(tmp_path / "x")]
        )


def test_paper_state_weights_choice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--weights fp32` trains float32 weights in the paper setup (the default is the published
    bf16); it is refused with skein's setup and for an unknown dtype."""
    seen = _record_steps(monkeypatch)
    base = ["eval", "state", "--setup", "paper", "--quick", "true", "--groups+", "S3", "--epochs", "1",
            "--num_train", "64", "--device", "cpu", "--progress", "false"]  # fmt: skip
    for weights, dtype in (("fp32", torch.float32), (None, torch.bfloat16)):
        seen.clear()
        out = tmp_path / f"state-{weights}"
        main([*base, "--output", str(out), *(["--weights", weights] if weights else [])])
        assert seen and all(group[3] == {dtype} for groups in seen for group in groups)
        assert json.loads((out / "args.json").read_text())["training"]["bf16_weights"] is (
            dtype == torch.bfloat16
        )
    refusals = [(["--weights", "fp16"], "--weights 'fp16': bf16 or fp32"),
                (["--setup", "skein", "--weights", "fp32"], "--weights fp32: only with --setup paper")]  # fmt: skip
    for bad, message in refusals:
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main([*base, *bad, "--output", str(tmp_path / "bad")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
