"""trainer.compile_mode: torch.compile's mode reaches every block (merged with skein's own Inductor
options, since torch.compile takes a mode or options, not both), and with CUDA graphs each
training micro-batch and each evaluation batch starts a new graph step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skein.train.config import ConfigError, load_config
from skein.train.loop.evaluation import ValidationLoss
from skein.train.loop.module import LMModule
from skein.train.loop.trainer import build_training_model
from skein.train.parallel.blocks import uses_cuda_graphs
from skein.train.parallel.execution import resolve_execution
from skein.train.plan import stage_plans
from tests.train.helpers import tiny_run, write_config


@pytest.mark.parametrize(
    ("mode", "graphs"),
    [
        ("default", False),
        ("reduce-overhead", True),
        ("max-autotune", True),
        ("max-autotune-no-cudagraphs", False),
    ],
)
def test_compile_mode_reaches_every_block(tmp_path: Path, mode: str, graphs: bool) -> None:
    path = write_config(tiny_run("c", tmp_path, arch="rwkv7"), tmp_path / "run.yaml")
    cfg = load_config(path, ["trainer.compile=true", f"trainer.compile_mode={mode}"])
    model = build_training_model(cfg)
    want = {**torch._inductor.list_mode_options(mode), "triton.mix_order_reduction": False}
    assert len(model.blocks) > 1
    assert [b._skein_compile["options"] for b in model.blocks] == [want] * len(model.blocks)
    assert uses_cuda_graphs(model) is graphs


def test_a_mode_without_compile_is_refused(tmp_path: Path) -> None:
    path = write_config(tiny_run("c", tmp_path), tmp_path / "run.yaml")
    with pytest.raises(ConfigError, match="trainer.compile_mode = reduce-overhead needs trainer.compile"):
        load_config(path, ["trainer.compile=false", "trainer.compile_mode=reduce-overhead"])
    with pytest.raises(ConfigError, match="trainer.compile_mode"):
        load_config(path, ["trainer.compile_mode=fastest"])
    assert load_config(path, ["trainer.compile_mode=reduce-overhead"]).trainer.compile == "auto"


def test_each_pass_starts_a_graph_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted through torch.compiler.cudagraph_mark_step_begin; the blocks run their eager forward
    (Inductor's CPU build would take minutes) but keep the compile arguments that ask for graphs."""
    marks: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    path = write_config(tiny_run("c", tmp_path, arch="rwkv7"), tmp_path / "run.yaml")
    for mode, per_pass in (("reduce-overhead", 1), ("max-autotune-no-cudagraphs", 0)):
        marks.clear()
        cfg = load_config(path, ["trainer.compile=true", f"trainer.compile_mode={mode}"])
        model = build_training_model(cfg)
        for block in model.blocks:
            block.forward = block._skein_inner
        module = LMModule(cfg, 0, model, stage_plans(cfg)[0], resolve_execution(cfg.trainer))
        g = torch.Generator().manual_seed(3)
        batches = [tuple(torch.randint(0, 257, (2, 24), generator=g) for _ in range(2)) for _ in range(3)]
        losses = [module.training_step(b, i) for i, b in enumerate(batches)]
        assert all(torch.isfinite(loss) and loss > 1.0 for loss in losses)
        assert len(marks) == 3 * per_pass
        samples = [(x[0], y[0]) for x, y in batches] * 2  # six samples, two per evaluation batch
        total = ValidationLoss(samples, samples=6, micro_bsz=2).sums(model)
        assert total[1] == 6 and total[0] / 6 > 1.0
        assert len(marks) == (3 + 3) * per_pass


@pytest.mark.gpu
def test_cuda_graph_steps_match_the_default_mode(tmp_path: Path) -> None:
    """Three optimizer steps of a small RWKV-7 (bf16, Triton kernels) under reduce-overhead give
    the default mode's losses and weights within bf16 rounding."""
    path = write_config(tiny_run("c", tmp_path, arch="rwkv7"), tmp_path / "run.yaml")
    g = torch.Generator().manual_seed(9)
    batches = [tuple(torch.randint(0, 257, (4, 64), generator=g).cuda() for _ in range(2)) for _ in range(3)]
    results = []
    for mode in ("default", "reduce-overhead"):
        torch._dynamo.reset()
        cfg = load_config(path, ["trainer.compile=true", f"trainer.compile_mode={mode}"])
        model = build_training_model(cfg).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        module = LMModule(cfg, 0, model, stage_plans(cfg)[0], resolve_execution(cfg.trainer))
        losses = []
        for i, batch in enumerate(batches):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = module.training_step(batch, i)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(float(loss))
        results.append((losses, [p.detach().float().cpu() for p in model.parameters()]))
    (ref, ref_w), (got, got_w) = results
    assert ref[0] > 1.0
    assert got == pytest.approx(ref, abs=2e-2)
    for a, b in zip(got_w, ref_w):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)
