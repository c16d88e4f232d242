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
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from skein.rwkv import build_model
from skein.rwkv.models import CausalLM
from skein.train.loop.losses import fused_lm_loss
from skein.train.parallel.blocks import apply_compile, apply_grad_checkpointing
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


def _check_compiled_matches(name: str, backend: str, checkpointing: bool | str, tol: float = 1e-5) -> None:
    torch._dynamo.reset()
    counters.clear()
    eager = build_model(TINY[name])
    perturb_parameters(eager)
    compiled = copy.deepcopy(eager)
    names = list(eager.state_dict())
    if checkpointing:
        apply_grad_checkpointing(compiled, selective=checkpointing == "selective")
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


def _saved_numel(model: CausalLM, idx: torch.Tensor) -> int:
    """Elements the forward pass keeps for the backward pass."""
    sizes = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits, _ = model(idx)
    logits.float().pow(2).mean().backward()
    return sum(sizes)


@pytest.mark.parametrize("compile_first", [False, True])
def test_checkpointing_and_compile_in_either_order(compile_first: bool) -> None:
    """Both wrappers take effect whatever the order: Dynamo compiles each block with the checkpoint
    inside its graph, so the forward keeps far fewer activations than the compiled blocks without
    checkpointing, and the gradients stay those of the eager model."""
    torch._dynamo.reset()
    counters.clear()
    eager = build_model(TINY["llama"])
    perturb_parameters(eager)
    plain, both = copy.deepcopy(eager), copy.deepcopy(eager)
    apply_compile(plain, backend=BACKEND)
    steps = [apply_grad_checkpointing, lambda m: apply_compile(m, backend=BACKEND)]
    for step in reversed(steps) if compile_first else steps:
        step(both)
    idx = random_tokens(97, B=4, T=64)
    kept_plain, kept_both = _saved_numel(plain, idx), _saved_numel(both, idx)
    assert counters["frames"]["ok"] > 0 and not counters["graph_break"], dict(counters["graph_break"])
    assert kept_both < kept_plain / 2, (kept_both, kept_plain)
    _saved_numel(eager, idx)
    for (n, p), q in zip(eager.named_parameters(), both.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=lambda m, n=n: f"{n}: {m}")


def _check_inductor_on_cuda(cfg: dict, B: int, T: int) -> None:
    """Eager and compiled under bf16 autocast, each against the eager model in float32: the
    compiled model is no further from it than the eager bf16 model, within a margin (Inductor
    keeps fused intermediates in float32 where eager rounds them to bf16, so it is not expected
    to match eager bf16 bit for bit)."""
    torch._dynamo.reset()
    counters.clear()
    eager = build_model(cfg).cuda()
    perturb_parameters(eager)
    compiled = copy.deepcopy(eager)
    apply_grad_checkpointing(compiled)
    apply_compile(compiled)
    V = cfg["vocab_size"]
    idx = random_tokens(V, B=B, T=T, seed=5).cuda()
    y = random_tokens(V, B=B, T=T, seed=6).cuda()
    ref_logits, _, ref_grads = _loss_and_grads(eager, idx, y)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf_logits, _, bf_grads = _loss_and_grads(eager, idx, y)
        logits, _, grads = _loss_and_grads(compiled, idx, y)
    assert counters["frames"]["ok"] > 0 and not counters["graph_break"], dict(counters["graph_break"])

    def err(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))

    assert err(logits, ref_logits) <= 1.5 * err(bf_logits, ref_logits) + 1e-3
    for n, g in ref_grads.items():
        e, e_bf = err(grads[n], g), err(bf_grads[n], g)
        assert e <= 1.5 * e_bf + 1e-2, f"{n}: compiled {e:.3g}, eager bf16 {e_bf:.3g} from float32"


@pytest.mark.gpu
@pytest.mark.parametrize("name", ARCHS)
def test_inductor_on_cuda_bf16_matches_eager(name: str) -> None:
    """The GPU setting: Triton kernels, bf16 autocast, checkpointed blocks compiled by Inductor;
    logits and gradients within bf16 noise of the eager model, and each block one graph (the
    kernels are custom ops Dynamo keeps whole; a break would split the block's fusion)."""
    # the GPU kernels take power-of-two head sizes (the CPU model's expand_v 1.5 gives V = 48)
    kernel_sizes = {"expand_v": 2.0} if name == "gated_deltaproduct2" else {}
    _check_inductor_on_cuda({**TINY[name], "vocab_size": 512, **kernel_sizes}, B=4, T=128)


@pytest.mark.gpu
def test_inductor_on_cuda_at_training_size() -> None:
    """RWKV-7 at the demo recipe's width and batch (8192 rows): Inductor picks other reduction
    schedules at this size than at the tiny one (its mix-order reduction returned [C] gradients
    for the [1, 1, C] mixing vectors here, which apply_compile now turns off)."""
    cfg = {"arch": "rwkv7", "vocab_size": 4096, "n_layer": 2, "d_model": 768, "head_size": 64}
    _check_inductor_on_cuda(cfg, B=16, T=512)


@pytest.mark.parametrize("name", ARCHS)
def test_blocks_of_a_deep_model_share_compiled_graphs(name: str) -> None:
    """Ten checkpointed compiled blocks need at most two graphs (the first block may differ): a
    graph per layer would exhaust Dynamo's recompile limit (8) and leave later blocks eager."""
    model = build_model({**TINY[name], "n_layer": 10})
    apply_grad_checkpointing(model)
    apply_compile(model, backend="eager")
    torch._dynamo.reset()
    counters.clear()
    idx = random_tokens(model.config.vocab_size, B=2, T=16, seed=3)
    model(idx)[0].float().logsumexp(-1).mean().backward()
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])


@pytest.mark.parametrize("name", ["llama", pytest.param("rwkv7", marks=pytest.mark.slow)])
def test_compiled_selective_checkpointing_matches_eager(name: str) -> None:
    _check_compiled_matches(name, BACKEND, checkpointing="selective")


class _CountMatmuls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.calls += func.name() in ("aten::mm", "aten::addmm", "aten::bmm")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", ARCHS)
def test_selective_checkpointing_reruns_no_matmul(name: str) -> None:
    """Selective checkpointing gives the gradients of no checkpointing, and its backward runs the
    same matmuls (those of the gradients); full checkpointing runs the forward's again."""
    model = build_model(TINY[name])
    perturb_parameters(model)
    idx = random_tokens(TINY[name]["vocab_size"], B=2, T=24, seed=5)
    results = {}
    for mode in ("none", "full", "selective"):
        m = copy.deepcopy(model)
        if mode != "none":
            apply_grad_checkpointing(m, selective=mode == "selective")
        loss = m(idx)[0].float().logsumexp(-1).mean()
        with _CountMatmuls() as count:
            loss.backward()
        results[mode] = count.calls, {n: p.grad for n, p in m.named_parameters()}
    assert results["full"][0] > results["none"][0] > 0
    assert results["selective"][0] == results["none"][0]
    for n, g in results["none"][1].items():
        torch.testing.assert_close(results["selective"][1][n], g, rtol=1e-5, atol=1e-6, msg=n)
