"""torch.compile of the blocks (as the trainer applies it, with and without gradient
checkpointing) gives the eager model's logits and gradients, for every architecture, and leaves
parameter names and the state-dict layout alone.

The fast tests use the aot_eager_decomp_partition backend (Dynamo's trace, AOTAutograd's joint
graph with Inductor's decompositions and partitioner, run by eager kernels: the graph capture is
what the models must get right; plain aot_eager trips over a stride of DeltaProduct's
softplus_backward that its eager kernel lays out differently from the trace). The Inductor test
generates C++ code and takes a minute or more on a cold cache, so it is marked slow.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters

from skein.rwkv import build_model
from skein.rwkv.models import CausalLM
from skein.train.losses import fused_lm_loss
from skein.train.strategy import apply_compile, apply_grad_checkpointing
from tests.models.harness import TINY, perturb_parameters, random_tokens

BACKEND = "aot_eager_decomp_partition"
ARCHS = ["rwkv4", "rwkv7", "deltanet", "gated_deltaproduct2", "llama"]


def _loss_and_grads(model: CausalLM, idx: torch.Tensor, y: torch.Tensor):
    model.zero_grad(set_to_none=True)
    logits, _ = model(idx)
    h, _ = model.hidden(idx)
    loss = fused_lm_loss(h, model.head.weight, y, 1e-4, 16)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logits.detach(), loss.detach(), grads


def _check_compiled_matches(name: str, backend: str, checkpointing: bool, tol: float = 1e-5) -> None:
    torch._dynamo.reset()
    counters.clear()
    eager = build_model(TINY[name])
    perturb_parameters(eager)
    compiled = copy.deepcopy(eager)
    names = list(eager.state_dict())
    if checkpointing:
        apply_grad_checkpointing(compiled)
    apply_compile(compiled, backend=backend)
    assert list(compiled.state_dict()) == names
    idx = random_tokens(TINY[name]["vocab_size"], B=2, T=24, seed=5)
    y = random_tokens(TINY[name]["vocab_size"], B=2, T=24, seed=6)
    ref_logits, ref_loss, ref_grads = _loss_and_grads(eager, idx, y)
    logits, loss, grads = _loss_and_grads(compiled, idx, y)
    assert counters["frames"]["ok"] > 0  # Dynamo did compile the blocks
    assert ref_logits.abs().max() > 0.1  # real logits, not an all-zero head
    torch.testing.assert_close(logits, ref_logits, rtol=tol, atol=tol)
    torch.testing.assert_close(loss, ref_loss, rtol=tol, atol=tol)
    assert grads.keys() == ref_grads.keys()
    for n in ref_grads:
        torch.testing.assert_close(
            grads[n], ref_grads[n], rtol=1e-4, atol=tol, msg=lambda m, n=n: f"{n}: {m}"
        )


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n != "llama" else n for n in ARCHS]
)
def test_compiled_blocks_match_eager(name: str) -> None:
    _check_compiled_matches(name, BACKEND, checkpointing=False)


@pytest.mark.slow
def test_compiled_checkpointed_blocks_match_eager() -> None:
    _check_compiled_matches("rwkv7", BACKEND, checkpointing=True)


@pytest.mark.slow
def test_inductor_checkpointed_blocks_match_eager() -> None:
    """Inductor's generated C++ code (what the GPU runs as Triton) on RWKV-7 with checkpointing."""
    _check_compiled_matches("rwkv7", "inductor", checkpointing=True, tol=2e-5)


def test_rwkv7_block_graph_has_no_break_or_float64() -> None:
    """The whole RWKV-7 block (parallel WKV form included) is one graph, and no float64 tensor
    enters it (Inductor's Triton code refuses fp64/fp32 mixes)."""
    torch._dynamo.reset()
    model = build_model(TINY["rwkv7"])
    perturb_parameters(model)
    block = model.blocks[1]
    x = torch.randn(2, 24, TINY["rwkv7"]["d_model"])
    v_first = torch.randn_like(x)
    explained = torch._dynamo.explain(block)(x, v_first, None)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    for node in explained.graphs[0].graph.nodes:
        val = node.meta.get("example_value")
        if isinstance(val, torch.Tensor):
            assert val.dtype != torch.float64, node.format_node()


@pytest.mark.parametrize("compile_first", [False, True])
def test_checkpointing_and_compile_in_either_order(compile_first: bool) -> None:
    """Both wrappers take effect whatever the order: Dynamo compiles the block's forward, and the
    backward pass recomputes it (a second forward run per block)."""
    torch._dynamo.reset()
    counters.clear()
    model = build_model(TINY["llama"])
    steps = [apply_grad_checkpointing, lambda m: apply_compile(m, backend=BACKEND)]
    for step in reversed(steps) if compile_first else steps:
        step(model)
    calls = []
    inner = model.blocks[0]._skein_inner
    model.blocks[0]._skein_inner = lambda *a: calls.append(1) or inner(*a)
    logits, _ = model(random_tokens(97, T=16))
    logits.float().pow(2).mean().backward()
    assert counters["frames"]["ok"] > 0
    assert len(calls) == 2  # forward, then the recomputation in the backward pass


@pytest.mark.gpu
@pytest.mark.parametrize("name", ARCHS)
def test_inductor_on_cuda_bf16_matches_eager(name: str) -> None:
    """The GPU setting: Triton kernels, bf16 autocast, checkpointed blocks compiled by Inductor;
    logits and gradients within bf16 noise of the eager model."""
    torch._dynamo.reset()
    cfg = {**TINY[name], "d_model": 128, "vocab_size": 512}
    eager = build_model(cfg).cuda()
    perturb_parameters(eager)
    compiled = copy.deepcopy(eager)
    apply_grad_checkpointing(compiled)
    apply_compile(compiled)
    idx = random_tokens(512, B=4, T=128, seed=5).cuda()
    y = random_tokens(512, B=4, T=128, seed=6).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ref_logits, _, ref_grads = _loss_and_grads(eager, idx, y)
        logits, _, grads = _loss_and_grads(compiled, idx, y)
    scale = ref_logits.float().abs().max()
    assert (logits.float() - ref_logits.float()).abs().max() <= 2e-2 * scale
    for n, g in ref_grads.items():
        err = (grads[n].float() - g.float()).norm() / g.float().norm().clamp_min(1e-12)
        assert err < 5e-2, f"{n}: relative error {err:.3g}"
