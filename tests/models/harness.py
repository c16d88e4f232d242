"""Tiny configs of every architecture and the checks each passes (run by test_every_arch.py;
the per-architecture files reuse them on variants)."""

from __future__ import annotations

import torch

from skein.rwkv import build_model
from skein.rwkv.models import CausalLM, detach_state
from tests.utils import assert_close

DELTAPRODUCT_BASE = {"arch": "deltaproduct", "vocab_size": 97, "n_layer": 2, "d_model": 64, "n_head": 2}
TINY: dict[str, dict] = {
    "rwkv4": {"arch": "rwkv4", "vocab_size": 97, "n_layer": 2, "d_model": 64},
    "rwkv7": {"arch": "rwkv7", "vocab_size": 97, "n_layer": 2, "d_model": 128, "head_size": 32},
    "deltanet": {
        **DELTAPRODUCT_BASE,
        "n_householder": 1,
        "use_gate": False,
        "allow_neg_eigval": False,
        "head_k_dim": 16,
    },
    "gated_deltaproduct2": {
        **DELTAPRODUCT_BASE,
        "n_householder": 2,
        "use_gate": True,
        "allow_neg_eigval": True,
        "expand_v": 1.5,
    },
    "llama": {"arch": "llama", "vocab_size": 97, "n_layer": 2, "d_model": 64, "n_head": 4, "n_kv_head": 2},
}


def random_tokens(vocab: int, B: int = 2, T: int = 37, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g)


def perturb_parameters(model: CausalLM, std: float = 0.05, seed: int = 2) -> None:
    """Add noise to every parameter, so parameters that start at zero take part in the checks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_((torch.randn(p.shape, generator=g, dtype=p.dtype) * std).to(p.device))


def check_segmented_and_stepwise(
    model: CausalLM, tol: float = 1e-5, segments: tuple[int, ...] = (5, 16, 16)
) -> None:
    """One pass == segments with the state carried == one token at a time."""
    model.eval()
    idx = random_tokens(model.config.vocab_size, T=sum(segments))
    with torch.no_grad():
        full, full_state = model(idx)
        outs, state, start = [], None, 0
        for n in segments:
            out, state = model(idx[:, start : start + n], state)
            outs.append(out)
            start += n
        assert_close(torch.cat(outs, 1), full, tol, "segmented logits")
        steps, state = [], None
        for t in range(idx.shape[1]):
            out, state = model(idx[:, t : t + 1], state)
            steps.append(out)
        assert_close(torch.cat(steps, 1), full, tol, "stepwise logits")
    for a, b in zip(_flat(state), _flat(full_state)):
        assert_close(a, b, tol, "final state")


def check_backends_agree(
    config: dict, backends: tuple[str, ...] = ("parallel", "naive"), tol: float = 1e-5
) -> None:
    """Logits and parameter gradients agree between sequence-mixing backends."""
    results = []
    for be in backends:
        torch.manual_seed(0)
        model = build_model({**config, "kernel": be})
        perturb_parameters(model)
        idx = random_tokens(model.config.vocab_size)
        logits, _ = model(idx)
        logits.float().pow(2).mean().backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (ref_logits, ref_grads), *others = results
    for logits, grads in others:
        assert_close(logits, ref_logits, tol, "logits")
        for name, grad in grads.items():
            assert grad is not None, f"no gradient reached {name}"
            assert_close(grad, ref_grads[name], max(tol, 1e-4), f"grad of {name}")


def check_overfits(model: CausalLM, steps: int = 60, lr: float = 3e-3) -> tuple[float, float]:
    """A tiny model memorises one small batch: the loss falls by a clear margin."""
    idx = random_tokens(model.config.vocab_size, B=4, T=33, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    first = last = 0.0
    for i in range(steps):
        logits, _ = model(idx[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if i == 0 else first
        last = loss.item()
    assert last < 0.5 * first, f"loss fell only from {first:.3f} to {last:.3f}"
    return first, last


def check_truncated_bptt(model: CausalLM) -> None:
    """Gradients flow within a segment and stop at a detached state."""
    idx = random_tokens(model.config.vocab_size, T=20)
    _, state = model(idx[:, :10])
    logits, _ = model(idx[:, 10:], detach_state(state))
    logits.float().mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def _flat(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, (list, tuple)):
        return [t for s in state for t in _flat(s)]
    return []
