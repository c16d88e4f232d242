"""The fused chunked head + cross entropy + L2Wrap gives lm_loss's loss and gradients."""

from __future__ import annotations

import pytest
import torch

from skein.train.loop.losses import fused_lm_loss, lm_loss


def _case(seed: int, B: int = 3, T: int = 37, C: int = 48, V: int = 301):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, C, generator=g)
    w = torch.randn(V, C, generator=g) * 0.3
    y = torch.randint(0, V, (B, T), generator=g)
    return h, w, y


def _grads(loss_fn, h, w):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = loss_fn(h, w)
    (loss * 1.7).backward()  # a non-unit upstream gradient must scale both gradients
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("l2wrap", [0.0, 1e-4, 0.5])
@pytest.mark.parametrize("chunk", [1, 16, 4096])
def test_fused_matches_lm_loss_fp32(l2wrap: float, chunk: int) -> None:
    h, w, y = _case(0)
    ref = _grads(lambda h, w: lm_loss(h @ w.t(), y, l2wrap), h, w)
    got = _grads(lambda h, w: fused_lm_loss(h, w, y, l2wrap, chunk), h, w)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_l2wrap_changes_the_gradient() -> None:
    """With a large factor the L2Wrap term is visible in the head gradient (so the test above
    checks it rather than a zero)."""
    h, w, y = _case(1)
    _, _, gw0 = _grads(lambda h, w: fused_lm_loss(h, w, y, 0.0, 16), h, w)
    _, _, gw1 = _grads(lambda h, w: fused_lm_loss(h, w, y, 0.5, 16), h, w)
    assert (gw1 - gw0).abs().max() > 1e-3


def test_fused_matches_under_bf16_autocast() -> None:
    h, w, y = _case(2, C=64, V=512)

    def run(fn):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return _grads(fn, h, w)

    ref = run(lambda h, w: lm_loss(torch.nn.functional.linear(h, w), y, 1e-4))
    got = run(lambda h, w: fused_lm_loss(h, w, y, 1e-4, 32))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-4)
    for a, b in zip(got[1:], ref[1:]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_no_grad_gives_the_loss_only() -> None:
    h, w, y = _case(3)
    with torch.no_grad():
        got = fused_lm_loss(h, w, y, 1e-4, 10)
        ref = lm_loss(h @ w.t(), y)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_chunk_must_be_positive() -> None:
    h, w, y = _case(4)
    with pytest.raises(ValueError, match="chunk_tokens"):
        fused_lm_loss(h, w, y, 0.0, 0)


def test_training_step_loss_is_the_same_fused_or_not(tmp_path) -> None:
    """LMModule's whole-sequence loss with trainer.fused_loss on and off: same loss, same gradient
    of every parameter (RWKV-7 tiny model, random tokens)."""
    from skein.rwkv import build_model
    from skein.train.config import load_config
    from skein.train.loop.module import LMModule
    from skein.train.parallel.execution import resolve_execution
    from skein.train.plan import stage_plans
    from tests.models.harness import perturb_parameters
    from tests.train.helpers import tiny_run, write_config

    path = write_config(tiny_run("c", tmp_path, arch="rwkv7"), tmp_path / "run.yaml")
    model = None
    results = []
    for fused in (False, True):
        cfg = load_config(path, [f"trainer.fused_loss={str(fused).lower()}", "trainer.loss_chunk_tokens=24"])
        if model is None:
            model = build_model(cfg.model)
            perturb_parameters(model)
        module = LMModule(cfg, 0, model, stage_plans(cfg)[0], resolve_execution(cfg.trainer))
        g = torch.Generator().manual_seed(7)
        x, y = (torch.randint(0, 257, (3, 32), generator=g) for _ in range(2))
        model.zero_grad(set_to_none=True)
        loss = module._loss(x, y)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, g_plain), (fused, g_fused) = results
    torch.testing.assert_close(fused, plain, rtol=1e-6, atol=1e-6)
    for n in g_plain:
        torch.testing.assert_close(
            g_fused[n], g_plain[n], rtol=1e-4, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}"
        )


@pytest.mark.slow
@pytest.mark.parametrize("l2wrap", [0.0, 1e-4])
def test_compiled_chunks_match_the_eager_ones(l2wrap: float) -> None:
    """trainer.compile also compiles the fused loss's per-chunk work: the same loss and gradients,
    a tail chunk of another size included (37 * 3 = 111 rows in chunks of 32)."""
    from skein.train.loop.losses import _compiled_ce_chunk

    h, w, y = _case(5, V=997)
    eager = _grads(lambda h, w: fused_lm_loss(h, w, y, l2wrap, 32), h, w)
    torch._dynamo.reset()
    _compiled_ce_chunk.cache_clear()
    got = _grads(lambda h, w: fused_lm_loss(h, w, y, l2wrap, 32, compiled=True), h, w)
    assert _compiled_ce_chunk.cache_info().currsize == 1, "the compiled form was not used"
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(fused_lm_loss(h, w, y, l2wrap, 32, compiled=True), eager[0])
