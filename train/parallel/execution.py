"""How a run executes: one frozen `Execution` (GPU or not, strategy kind, precision, world size,
whether the engine clips, whether parameters are partitioned, the checkpoint format), resolved
once from the trainer section and this machine and passed to everything that depends on it.

The kinds: `single` (one process), `ddp` (one model replica per process, NCCL on GPUs, gloo on
the CPU) and `deepspeed` (ZeRO stages 1-3 on GPUs, its engine clips gradients and writes
model.ckpt as a directory of shards; parallel/deepspeed.py holds the engine's calls). A new kind
(FSDP2, say) is a new value here and its module beside this one; nothing else tests what kind of
run this is. Only these two modules import or name the engine.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch

    from skein.train.config import TrainerSection

StrategyName = Literal["auto", "single", "ddp", "deepspeed"]
"""trainer.strategy as a config file writes it (auto: resolved by `resolve_strategy`)."""
ENGINE_LOGGERS = ("DeepSpeed", "deepspeed")
"""Loggers of the sharded engine, set to warnings by `skein` unless --verbose."""


def use_gpu(tc: TrainerSection) -> bool:
    import torch

    if tc.accelerator == "gpu" and not torch.cuda.is_available():
        raise ValueError("trainer.accelerator=gpu, but no CUDA device is visible")
    return tc.accelerator == "gpu" or (tc.accelerator == "auto" and torch.cuda.is_available())


def resolve_strategy(tc: TrainerSection, gpu: bool) -> str:
    """trainer.strategy with `auto` resolved: DeepSpeed ZeRO on several GPUs, DDP for several CPU
    processes, else one device. On one GPU ZeRO partitions nothing, and its optimizer path (flat
    buffer copies, fp32 master update) cost 69 ms a step where one device's fused AdamW takes 9
    (docs/perf.md)."""
    if tc.strategy != "auto":
        return tc.strategy
    if tc.devices * tc.num_nodes == 1:
        return "single"
    return "deepspeed" if gpu else "ddp"


def resolve_compile(tc: TrainerSection) -> bool:
    """trainer.compile with `auto` resolved: on with GPUs, off on the CPU."""
    return use_gpu(tc) if tc.compile == "auto" else tc.compile


def resolve_precision(tc: TrainerSection | None, gpu: bool) -> str:
    """trainer.precision with `auto` resolved: bf16-mixed on GPUs, 32 on the CPU (None: auto)."""
    precision = tc.precision if tc is not None else "auto"
    return precision if precision != "auto" else ("bf16-mixed" if gpu else "32")


@dataclass(frozen=True)
class Execution:
    """How this run executes, resolved once (`resolve_execution`) and passed down."""

    gpu: bool
    kind: Literal["single", "ddp", "deepspeed"]
    precision: str
    """Lightning's precision name: 32, bf16-mixed, 16-mixed or bf16-true."""
    devices: int = 1
    num_nodes: int = 1
    zero_stage: int = 0
    """ZeRO stage of the sharded engine (0: not sharded)."""
    offload_optimizer: bool = False
    """The optimizer states live on the CPU (the engine's CPU Adam steps them)."""
    compile: bool = False
    """torch.compile each block."""

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def engine_clips(self) -> bool:
        """The engine clips gradients and measures their norm inside its step (Lightning passes
        it gradient_clip_val); otherwise LMModule clips before the optimizer step."""
        return self.kind == "deepspeed"

    @property
    def partitioned_params(self) -> bool:
        """Parameters exist only while their module runs (ZeRO-3)."""
        return self.kind == "deepspeed" and self.zero_stage == 3

    @property
    def checkpoint_format(self) -> Literal["file", "shards"]:
        """What a mid-stage checkpoint's model.ckpt is: one file, or a directory of engine shards."""
        return "shards" if self.kind == "deepspeed" else "file"

    def identity(self) -> tuple[Any, ...]:
        """What a resumed stage must keep: the checkpoint's format (with the engine's ZeRO stage
        and offload) and the precision; ddp, single and a CPU `auto` are the same."""
        engine = (True, self.zero_stage, self.offload_optimizer) if self.kind == "deepspeed" else (False,)
        return engine, self.precision

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for L.Trainer: accelerator, devices, num_nodes, strategy, precision."""
        if self.kind == "deepspeed":
            from skein.train.parallel.deepspeed import deepspeed_strategy

            strategy: Any = deepspeed_strategy(self.zero_stage, self.offload_optimizer)
        elif self.kind == "ddp":
            from lightning.pytorch.strategies import DDPStrategy

            strategy = DDPStrategy(process_group_backend="nccl" if self.gpu else "gloo")
        else:
            strategy = "auto"
        return {
            "accelerator": "gpu" if self.gpu else "cpu",
            "devices": self.devices,
            "num_nodes": self.num_nodes,
            "strategy": strategy,
            "precision": self.precision,
        }

    def offloaded_optimizer(
        self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float
    ) -> torch.optim.Optimizer:
        """The engine's CPU Adam (AdamW mode) over `groups`, for optimizer states on the CPU."""
        from skein.train.parallel.deepspeed import cpu_adam

        return cpu_adam(groups, lr, betas, eps)

    def grad_norm(self, strategy: Any, own: torch.Tensor | None) -> Any:
        """The global gradient norm before clipping: the engine's when it clips, else `own`."""
        if self.engine_clips:
            from skein.train.parallel.deepspeed import engine_grad_norm

            return engine_grad_norm(strategy)
        return own

    def release(self, strategy: Any) -> None:
        """Undo what a stage's engine attached to the model, before the next stage builds its own."""
        if self.kind == "deepspeed":
            from skein.train.parallel.deepspeed import release_engine

            release_engine(strategy)

    def autocast(self) -> Any:
        """The autocast context of this precision for code that runs the model outside Lightning
        (eval, generate): bf16 autocast for bf16-mixed and bf16-true, fp16 for 16-mixed, none
        for 32."""
        if self.precision == "32":
            return nullcontext()
        import torch

        dtype = torch.float16 if self.precision == "16-mixed" else torch.bfloat16
        return torch.autocast("cuda" if self.gpu else "cpu", dtype=dtype)


def resolve_execution(tc: TrainerSection, validate: bool = True) -> Execution:
    """The execution the trainer section asks for on this machine; ValueError where it cannot run
    (unless not `validate`: a stored config's execution, compared but never run)."""
    gpu = use_gpu(tc)
    world = tc.devices * tc.num_nodes
    kind = resolve_strategy(tc, gpu)
    if validate and kind == "deepspeed" and not gpu:
        raise ValueError("trainer.strategy=deepspeed needs GPUs; use ddp or single on the CPU")
    if validate and kind == "single" and world > 1:
        raise ValueError(f"trainer.strategy=single with {world} processes; use ddp or deepspeed")
    sharded = kind == "deepspeed"
    return Execution(
        gpu=gpu,
        kind=kind,  # type: ignore[arg-type]
        precision=resolve_precision(tc, gpu),
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        zero_stage=tc.zero_stage if sharded else 0,
        offload_optimizer=tc.offload_optimizer and sharded,
        compile=resolve_compile(tc),
    )


def inference_execution(device: torch.device, precision: str = "auto") -> Execution:
    """One process on `device` at a run's trainer.precision (auto: bf16-mixed on CUDA, 32
    elsewhere), for eval and generate."""
    gpu = device.type == "cuda"
    return Execution(
        gpu=gpu, kind="single", precision=precision if precision != "auto" else resolve_precision(None, gpu)
    )


def hardware_problems(tc: TrainerSection, on_nonfinite: str) -> list[str]:
    """What in the trainer section cannot run on this machine, each with what to change."""
    import os

    import torch

    problems = []
    gpus = torch.cuda.device_count()
    gpu = gpus > 0 and tc.accelerator != "cpu"
    if tc.accelerator == "gpu" and gpus == 0:
        problems.append("trainer.accelerator=gpu, but no CUDA GPU is visible: set trainer.accelerator=auto")
    if not gpu:
        if tc.strategy == "deepspeed":
            problems.append("trainer.strategy=deepspeed needs GPUs: set trainer.strategy=auto")
        if tc.precision not in ("auto", "32"):
            problems.append(f"trainer.precision={tc.precision} is for GPUs: set trainer.precision=auto")
        cores = os.cpu_count() or 1
        if tc.num_nodes == 1 and tc.devices > cores:
            problems.append(
                f"trainer.devices={tc.devices} CPU processes on {cores} core(s): set trainer.devices=1"
            )
    elif gpus and tc.devices > gpus and tc.num_nodes == 1:
        problems.append(
            f"trainer.devices={tc.devices}, but {gpus} GPU(s) are visible: set trainer.devices={gpus}"
        )
    if tc.strategy == "single" and tc.devices * tc.num_nodes > 1:
        problems.append(
            "trainer.strategy=single runs one process: set trainer.strategy=auto or trainer.devices=1"
        )
    if on_nonfinite == "skip" and resolve_strategy(tc, gpu) == "deepspeed":
        problems.append(
            "optim.on_nonfinite=skip runs with trainer.strategy ddp or single; with DeepSpeed use stop"
        )
    return problems


def check_checkpoint_engine(ckpt: Path, deepspeed: bool) -> None:
    """A checkpoint from the middle of a stage resumes only under the kind of strategy that wrote
    it: DeepSpeed writes model.ckpt as a directory of ZeRO shards, DDP and one device a file. (A
    finished stage hands over weights only, which any strategy loads.)"""
    from skein.train.typed import ConfigError

    if ckpt.is_dir() == deepspeed:
        return
    wrote, want = ("DeepSpeed", "deepspeed") if ckpt.is_dir() else ("DDP or one device", "single or ddp")
    raise ConfigError(
        f"{ckpt}: written by {wrote}, which the resumed stage must run under: set trainer.strategy={want} "
        "(trainer.strategy=auto picks deepspeed for several GPUs and one device for one GPU)"
    )


def check_checkpoint_format(ckpt: Path, execution: Execution) -> None:
    """check_checkpoint_engine for the run's execution."""
    check_checkpoint_engine(ckpt, execution.checkpoint_format == "shards")


def load_sharded_weights(path: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of a directory of engine shards, consolidated on the CPU."""
    from skein.train.parallel.deepspeed import consolidate

    return consolidate(path)
