"""Segment-wise training (train/loop/segments.py): the loss equals the whole-sequence loss; with bptt
all its gradient equals the whole-sequence gradient for every recurrent architecture; bptt 1 and
bptt 2 equal hand-written truncated references; it nests inside block checkpointing; the trainer
runs a segmented stage, stops on SIGTERM and resumes."""

from __future__ import annotations

import copy
import json
import signal
from pathlib import Path

import pytest
import torch

from skein.rwkv import build_model
from skein.rwkv.models import CausalLM, detach_state
from skein.train.config import ConfigError, load_config
from skein.train.loop.losses import lm_loss
from skein.train.loop.segments import compact_state, segmented_loss
from skein.train.parallel.blocks import apply_compile, apply_grad_checkpointing
from tests.models.harness import TINY, perturb_parameters, random_tokens
from tests.train.helpers import losses, run_cli, start_cli, tiny_run, wait_for, write_config
from tests.utils import assert_close, rel_err

RECURRENT = sorted(name for name, cfg in TINY.items() if cfg["arch"] != "llama")
SEG, N_SEG, L2WRAP = 8, 4, 0.05


def _model(name: str) -> CausalLM:
    model = build_model(TINY[name])
    perturb_parameters(model)
    return model


def _batch(model: CausalLM) -> tuple[torch.Tensor, torch.Tensor]:
    idx = random_tokens(model.config.vocab_size, B=2, T=SEG * N_SEG + 1, seed=5)
    return idx[:, :-1], idx[:, 1:]


def _grads(model: CausalLM, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == len(list(model.parameters())), "a parameter got no gradient"
    return grads


def _truncated_reference(model: CausalLM, x: torch.Tensor, y: torch.Tensor, group: int) -> torch.Tensor:
    """Plain segment loop without checkpointing: segment losses weighted 1/N_SEG (and L2Wrap
    spread the same way), the state detached after every `group` segments."""
    total, state = 0.0, None
    for i in range(N_SEG):
        logits, state = model(x[:, i * SEG : (i + 1) * SEG], state)
        total = total + lm_loss(logits, y[:, i * SEG : (i + 1) * SEG], L2WRAP / N_SEG) / N_SEG
        if (i + 1) % group == 0:
            state = detach_state(state)
    return total


def _assert_grads_close(got: dict, want: dict, tol: float, what: str) -> None:
    for name, g in want.items():
        assert_close(got[name], g, tol, f"{what}: grad of {name}")


def _assert_grads_differ(got: dict, want: dict, what: str) -> None:
    worst = max(rel_err(got[n], g) for n, g in want.items())
    assert worst > 1e-3, f"{what}: gradients are indistinguishable (max relative error {worst:.1e})"


@pytest.mark.parametrize("name", RECURRENT)
def test_exact_mode_equals_whole_sequence_loss_and_gradient(name: str) -> None:
    model = _model(name)
    x, y = _batch(model)
    whole = lm_loss(model(x)[0], y, L2WRAP)
    want = _grads(model, whole)
    seg = segmented_loss(model, x, y, SEG, bptt=0, l2wrap=L2WRAP)
    assert abs(seg.item() - whole.item()) < 1e-5 * whole.item()
    _assert_grads_close(_grads(model, seg), want, 2e-5, name)


def test_fused_head_loss_inside_segments_equals_plain_logits() -> None:
    """The chunked head + cross entropy inside each segment gives the loss and gradients of the
    plain-logits segments (chunks smaller than a segment, so several run per segment)."""
    model = _model("rwkv7")
    x, y = _batch(model)
    plain = segmented_loss(model, x, y, SEG, bptt=0, l2wrap=L2WRAP)
    want = _grads(model, plain)
    fused = segmented_loss(model, x, y, SEG, bptt=0, l2wrap=L2WRAP, chunk_tokens=SEG // 2 + 1)
    assert abs(fused.item() - plain.item()) < 1e-5 * plain.item()
    _assert_grads_close(_grads(model, fused), want, 2e-5, "fused")


@pytest.mark.parametrize("name", RECURRENT)
def test_detached_and_truncated_modes_equal_hand_references(name: str) -> None:
    model = _model(name)
    x, y = _batch(model)
    exact = _grads(model, segmented_loss(model, x, y, SEG, bptt=0, l2wrap=L2WRAP))
    refs = {}
    for bptt in (1, 2):
        ref = _grads(model, _truncated_reference(model, x, y, bptt))
        got = _grads(model, segmented_loss(model, x, y, SEG, bptt=bptt, l2wrap=L2WRAP))
        _assert_grads_close(got, ref, 2e-5, f"{name} bptt={bptt}")
        _assert_grads_differ(got, exact, f"{name} bptt={bptt} vs exact")
        refs[bptt] = got
    _assert_grads_differ(refs[2], refs[1], f"{name} bptt=2 vs bptt=1")


def test_nested_in_block_checkpointing() -> None:
    model = _model("rwkv7")
    x, y = _batch(model)
    want = _grads(model, lm_loss(model(x)[0], y, L2WRAP))
    checkpointed = copy.deepcopy(model)
    apply_grad_checkpointing(checkpointed)
    for bptt, ref_model in ((0, None), (2, model)):
        got = _grads(checkpointed, segmented_loss(checkpointed, x, y, SEG, bptt=bptt, l2wrap=L2WRAP))
        if ref_model is not None:
            want = _grads(ref_model, _truncated_reference(ref_model, x, y, bptt))
        _assert_grads_close(got, want, 2e-5, f"checkpointed blocks, bptt={bptt}")


def test_compiled_blocks_stay_compiled_inside_segments() -> None:
    """Each segment runs its blocks twice, without and with gradients, as separate calls: compiled
    blocks compile for both and the gradient is the whole sequence's."""
    model = _model("rwkv7")
    x, y = _batch(model)
    want = _grads(model, lm_loss(model(x)[0], y, L2WRAP))
    compiled = copy.deepcopy(model)
    apply_grad_checkpointing(compiled)
    apply_compile(compiled, backend="eager")
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    got = _grads(compiled, segmented_loss(compiled, x, y, SEG, bptt=0, l2wrap=L2WRAP))
    assert counters["stats"]["unique_graphs"] >= 2, dict(counters["stats"])
    _assert_grads_close(got, want, 2e-5, "compiled blocks inside segments")


def test_forward_keeps_only_the_carried_states() -> None:
    """Between forward and backward a segmented loss holds each segment's incoming state and
    nothing of its activations (the same sequence unsegmented saves far more)."""
    model = _model("rwkv7")
    x, y = _batch(model)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        segmented_loss(model, x, y, SEG, bptt=0, l2wrap=L2WRAP)
    state = model(x[:, :SEG])[1]
    state_numel = sum(t.numel() for t in torch.utils._pytree.tree_leaves(state))
    assert 0 < sum(saved) <= (N_SEG - 1) * state_numel + N_SEG, (sum(saved), state_numel)
    whole: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: whole.append(t.numel()) or t, lambda t: t):
        lm_loss(model(x)[0], y, L2WRAP)
    assert sum(whole) > 4 * sum(saved)


@pytest.mark.parametrize("name", ["rwkv7", "gated_deltaproduct2"])
def test_zero3_checkpointed_segments_equal_recomputed_segments(name: str) -> None:
    """Under ZeRO-3 (parameters gathered per module) segments run under activation checkpointing
    instead; both give the same gradients, exact and truncated."""
    model = _model(name)
    x, y = _batch(model)
    for bptt in (0, 2):
        want = _grads(model, segmented_loss(model, x, y, SEG, bptt=bptt, l2wrap=L2WRAP))
        got = _grads(model, segmented_loss(model, x, y, SEG, bptt, L2WRAP, partitioned_params=True))
        _assert_grads_close(got, want, 2e-5, f"{name} checkpointed, bptt={bptt}")


def test_backward_recomputes_one_segment_at_a_time_last_first() -> None:
    """Activation memory of one segment: each segment's recompute starts only after the gradient
    of the later segments has reached their embeddings."""
    model = _model("rwkv7")
    apply_grad_checkpointing(model)
    x, y = _batch(model)
    segment_of = {x[:, i * SEG :].data_ptr(): i for i in range(N_SEG)}
    events: list[tuple[str, int]] = []

    def on_embed(module, args, out):
        i = segment_of[args[0].data_ptr()]
        events.append(("forward", i))
        if out.requires_grad and torch.is_grad_enabled():
            out.register_hook(lambda g: events.append(("backward done", i)))

    model.emb.register_forward_hook(on_embed)
    loss = segmented_loss(model, x, y, SEG, bptt=0, l2wrap=L2WRAP)
    assert events == [("forward", i) for i in range(N_SEG)]
    events.clear()
    loss.backward()
    expected = [(e, i) for i in reversed(range(N_SEG)) for e in ("forward", "backward done")]
    assert events == expected


def test_each_gradient_hook_fires_once_per_backward() -> None:
    """What DeepSpeed ZeRO and DDP reduce on: one accumulated gradient per parameter and backward,
    whatever the number of segments, with block checkpointing nested."""
    model = _model("deltanet")
    apply_grad_checkpointing(model)
    x, y = _batch(model)
    calls = dict.fromkeys(dict(model.named_parameters()), 0)
    for name, p in model.named_parameters():
        p.register_post_accumulate_grad_hook(lambda _, name=name: calls.__setitem__(name, calls[name] + 1))
    segmented_loss(model, x, y, SEG, bptt=0, l2wrap=L2WRAP).backward()
    assert set(calls.values()) == {1}, calls


def test_carried_state_does_not_hold_the_activations() -> None:
    model = _model("rwkv7")
    x, _ = _batch(model)
    _, state = model(x)
    tensors = [t for block in state for t in block]
    assert any(t.untyped_storage().nbytes() > t.numel() * t.element_size() for t in tensors)
    compact = [t for block in compact_state(state) for t in block]
    for t, c in zip(tensors, compact):
        assert c.untyped_storage().nbytes() == c.numel() * c.element_size()
        assert torch.equal(t, c)


def test_bad_segmentation_is_refused(tmp_path: Path) -> None:
    model = _model("rwkv4")
    x, y = _batch(model)
    with pytest.raises(ValueError, match="segment_len=7"):
        segmented_loss(model, x, y, 7, bptt=0)
    with pytest.raises(ConfigError, match="bptt=-1"):
        load_config(None, ["model.arch=rwkv7", "stages=[{ctx_len: 64, segment_len: 16, bptt: -1}]"])
    with pytest.raises(ConfigError, match="bptt=2 applies to segments"):
        load_config(None, ["model.arch=rwkv7", "stages=[{ctx_len: 64, bptt: 2}]"])
    with pytest.raises(ConfigError, match="model.arch=llama carries no fixed-size recurrent state"):
        load_config(None, ["model.arch=llama", "stages=[{ctx_len: 64, segment_len: 16}]"])
    cfg = load_config(None, ["model.arch=rwkv7", "stages=[{ctx_len: 64, segment_len: 16, bptt: all}]"])
    assert cfg.stages[0].bptt_segments == 0


def _segmented_run(corpus: str, out: Path, **sections) -> dict:
    stage = {"ctx_len": 64, "tokens": 64 * 8 * 10, "micro_bsz": 4, "tokens_per_step": 64 * 8}
    return tiny_run(
        corpus,
        out,
        arch="rwkv7",
        stages=[{**stage, "segment_len": 16, "bptt": 2}],
        trainer={"accelerator": "cpu", "grad_checkpointing": True},
        **sections,
    )


@pytest.mark.slow
def test_trainer_runs_segmented_stages_resumes_after_sigterm_and_on_ddp(corpus: str, tmp_path: Path) -> None:
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "term"
    res = run_cli(["train", str(write_config(_segmented_run(corpus, ref_dir), tmp_path / "ref.yaml"))])
    assert res.returncode == 0, res.stderr[-3000:]
    ref = losses(ref_dir)
    assert max(step for _, step in ref) == 10
    assert ref[(0, 10)] < ref[(0, 1)] - 0.5, "the segmented run does not learn"

    cfg = write_config(_segmented_run(corpus, run_dir, checkpoint={"every_steps": 100}), tmp_path / "t.yaml")
    proc = start_cli(["train", str(cfg)], tmp_path / "term.log")
    wait_for(lambda: (run_dir / "metrics.csv").exists() and len(losses(run_dir)) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    meta = json.loads((run_dir / "checkpoints" / latest / "meta.json").read_text())
    assert 2 <= meta["step"] < 10 and not meta["stage_done"], f"the run did not stop early: {meta}"
    res = run_cli(["train", str(cfg)])
    assert res.returncode == 0, res.stderr[-3000:]
    got = losses(run_dir)
    assert max(step for _, step in got) == 10
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-5), f"step {key}: resumed {got[key]} != {value}"

    # 2 CPU processes (DDP on gloo), same tokens per step: the curve follows the 1-process run
    ddp_dir = tmp_path / "ddp"
    ddp = _segmented_run(corpus, ddp_dir)
    ddp["trainer"].update(devices=2, strategy="ddp")
    res = run_cli(["train", str(write_config(ddp, tmp_path / "ddp.yaml"))], timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    got = losses(ddp_dir)
    assert sorted(got) == sorted(ref)
    for key, value in got.items():
        assert value == pytest.approx(ref[key], rel=2e-4), f"step {key}: 2 processes {value} != {ref[key]}"


def test_recompute_runs_under_the_forwards_autocast() -> None:
    """A segment's backward recomputes it in the mixed precision of its forward (bf16 autocast
    here): its gradient is the whole sequence's under the same autocast, not the float32 one."""
    model = _model("rwkv7")
    x, y = _batch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        whole = lm_loss(model(x)[0], y, L2WRAP)
    want = _grads(model, whole)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seg = segmented_loss(model, x, y, SEG, bptt=0, l2wrap=L2WRAP)
    _assert_grads_close(_grads(model, seg), want, 3e-2, "bf16 autocast")
    _assert_grads_differ(_grads(model, lm_loss(model(x)[0], y, L2WRAP)), want, "float32 vs bf16")
