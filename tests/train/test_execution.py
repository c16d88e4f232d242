"""The parallelism layer: one Execution resolved from the trainer section and the machine, what
it tells the rest of the trainer, the Trainer built from it, the precision eval and generate take
from it, and the plan passed explicitly rather than held by the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from skein.train.checkpoints.checkpoint import DirectCheckpointIO
from skein.train.checkpoints.weights import Source
from skein.train.config import ConfigError, load_config
from skein.train.eval.common import autocast
from skein.train.loop.trainer import build_stage_trainer
from skein.train.parallel.execution import inference_execution, resolve_execution
from skein.train.plan import stage_plans
from tests.train.helpers import tiny_run, write_config

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="resolves the CPU defaults")


def _config(tmp_path: Path, *overrides: str):
    path = write_config(tiny_run("unused", tmp_path / "run"), tmp_path / "run.yaml")
    return load_config(path, list(overrides))


@cpu_only
def test_one_cpu_process(tmp_path: Path) -> None:
    ex = resolve_execution(_config(tmp_path).trainer)
    assert (ex.gpu, ex.kind, ex.precision, ex.world_size) == (False, "single", "32", 1)
    assert not ex.engine_clips and not ex.partitioned_params and not ex.compile
    assert ex.checkpoint_format == "file"
    kwargs = ex.trainer_kwargs()
    assert kwargs["accelerator"] == "cpu" and kwargs["strategy"] == "auto" and kwargs["precision"] == "32"


@cpu_only
def test_several_cpu_processes_run_ddp_on_gloo(tmp_path: Path) -> None:
    ex = resolve_execution(_config(tmp_path, "trainer.devices=2").trainer)
    assert ex.kind == "ddp" and ex.world_size == 2 and ex.checkpoint_format == "file"
    strategy = ex.trainer_kwargs()["strategy"]
    assert isinstance(strategy, DDPStrategy) and strategy._process_group_backend == "gloo"


@cpu_only
def test_sharded_engine_traits_and_resume_identity(tmp_path: Path) -> None:
    """The engine's traits follow its settings; its settings matter to a resume only under it."""
    with pytest.raises(ValueError, match="needs GPUs"):
        resolve_execution(_config(tmp_path, "trainer.strategy=deepspeed").trainer)
    z2 = resolve_execution(_config(tmp_path, "trainer.strategy=deepspeed").trainer, validate=False)
    z3 = resolve_execution(
        _config(tmp_path, "trainer.strategy=deepspeed", "trainer.zero_stage=3").trainer, validate=False
    )
    assert z2.engine_clips and z2.checkpoint_format == "shards" and not z2.partitioned_params
    assert z3.partitioned_params and z2.identity() != z3.identity()
    single = [resolve_execution(_config(tmp_path, f"trainer.zero_stage={z}").trainer) for z in (1, 3)]
    assert single[0] == single[1] and single[0].identity() == (((False,), "32"))


@cpu_only
def test_stage_trainer_follows_plan_and_execution(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "trainer.devices=2")
    plan = stage_plans(cfg)[0]
    ex = resolve_execution(cfg.trainer)
    trainer = build_stage_trainer(cfg, plan, ex, tmp_path / "run", [])
    assert plan.accumulate == 1 and trainer.accumulate_grad_batches == plan.accumulate
    assert trainer.max_steps == plan.steps == 12
    assert trainer.gradient_clip_val is None  # LMModule clips where the engine does not
    assert isinstance(trainer.strategy.checkpoint_io, DirectCheckpointIO)
    assert build_stage_trainer(cfg, plan, ex, tmp_path / "run", [], max_steps=3).max_steps == 3


def test_config_holds_no_plan_but_refuses_an_impossible_batch(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert not hasattr(cfg, "plans")
    plan = stage_plans(cfg)[0]
    assert (plan.tokens_per_step, plan.global_batch, plan.accumulate) == (256, 8, 2)
    assert stage_plans(cfg, [512])[0].accumulate == 4  # the tokens per step a run recorded
    with pytest.raises(ConfigError, match=r"stages\[0\].tokens_per_step is 200 tokens per step"):
        _config(tmp_path, "stages.0.tokens_per_step=200")


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("auto", torch.float32),
        ("32", torch.float32),
        ("bf16-mixed", torch.bfloat16),
        ("bf16-true", torch.bfloat16),
    ],
)
def test_eval_runs_at_the_runs_precision(precision: str, dtype: torch.dtype) -> None:
    """eval (common.autocast) and generate (inference_execution) take the run's trainer.precision;
    auto on the CPU is fp32 as before."""
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 7, generator=g), torch.randn(7, 3, generator=g)
    device = torch.device("cpu")
    with autocast(device, precision):
        assert (a @ b).dtype == dtype
    with inference_execution(device, precision).autocast():
        assert (a @ b).dtype == dtype
    src = Source(model=None, path="x", run_config={"trainer": {"precision": precision}})  # type: ignore[arg-type]
    assert src.precision() == precision
    assert Source(model=None, path="x", run_config=None).precision() == "auto"  # type: ignore[arg-type]
