"""The run config: typed dataclasses for every number a user may change, loaded from YAML with
dotted overrides and validated at load with messages that name the key.

A run is one file (see configs/): run, model, data, optim, schedule, stages, trainer, checkpoint,
log, eval, slurm. `model` is a tagged union of the architectures' config classes, selected by
`arch`. Derived numbers (gradient accumulation, steps per stage, the magic prime) are never
written in it: plan.py derives them once per run (stage_plans), from the config and, on a resume,
the tokens per step the run's checkpoints recorded.
"""

from __future__ import annotations

import difflib
import re
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from skein.train.loop.schedule import ScheduleSection
from skein.train.parallel.execution import StrategyName
from skein.train.typed import ConfigError, apply_override, from_dict, plain

if TYPE_CHECKING:  # imported when a config is built: the model classes import torch
    from skein.rwkv.models import ModelConfig

__all__ = ["ConfigError", "RunConfig", "ScheduleSection", "StageSection", "dump_config", "load_config"]


@dataclass(kw_only=True)
class RunSection:
    name: str = "run"
    """Run name (used for logging)."""
    out_dir: str = "runs/run"
    """Run directory: checkpoints, logs, snapshots and the resolved config go here."""
    seed: int = 0
    """Seed for initialisation and data order."""
    stop_after_steps: int | None = None
    """Save a checkpoint and exit after this many optimizer steps of one invocation (for
    time-limited jobs); the next `skein train` resumes. None: run to the end."""


@dataclass(kw_only=True)
class DataSection:
    train: list[str] = field(default_factory=list)
    """binidx prefixes (path without .bin/.idx) to train on."""
    weights: list[float] | None = None
    """Mixing weights, one per prefix (None: proportional to nothing, all equal)."""
    tokenizer: str | None = None
    """Expected tokenizer spec; when the shards' meta records another vocabulary the run refuses."""
    num_workers: int = 0
    """DataLoader worker processes."""
    sample_offset: int = 0
    """Each source's k-th sample is sample k + sample_offset of its magic-prime order. RWKV-LM
    starts at sample 1 (its ii = 1 + epoch * samples_per_epoch + idx * world_size + rank): set 1
    to read the same windows in the same order as its trainer."""
    pass_order: Literal["vary", "repeat"] = "vary"
    """Order of the second and later passes over a source: vary: a new order each pass (each pass
    still reads every window once); repeat: the first pass's order again, as RWKV-LM does."""

    def __post_init__(self) -> None:
        if self.sample_offset < 0:
            raise ConfigError(f"data.sample_offset must be >= 0, got {self.sample_offset}")
        if self.weights is not None and len(self.weights) != len(self.train):
            raise ConfigError(
                f"data.weights has {len(self.weights)} entries for {len(self.train)} data.train prefixes"
            )
        if self.weights is not None and any(w <= 0 for w in self.weights):
            raise ConfigError(f"data.weights must be positive, got {self.weights}")


@dataclass(kw_only=True)
class OptimSection:
    lr_init: float = 6e-4
    """Peak learning rate (after warmup)."""
    lr_final: float = 6e-5
    """Learning rate at the end of the planned tokens."""
    betas: tuple[float, float] = (0.9, 0.99)
    """AdamW betas."""
    eps: float = 1e-18
    """AdamW epsilon."""
    weight_decay: float = 0.001
    """Decoupled weight decay, applied only to 2-D weight matrices."""
    grad_clip: float = 1.0
    """Gradient-norm clipping (0 disables)."""
    l2wrap: float = 1e-4
    """RWKV's L2Wrap: pushes the largest logit towards 0 with this factor / (B T) (0 disables)."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN or infinite loss (on any rank): stop raises an error before anything is saved; skip
    drops that step's update (counted in metrics.csv `skipped`). skip needs ddp or single."""
    max_skipped: int = 10
    """on_nonfinite=skip: stop with an error once more steps than this were skipped in a stage."""

    def __post_init__(self) -> None:
        if self.max_skipped < 0:
            raise ConfigError(f"optim.max_skipped must be >= 0, got {self.max_skipped}")
        if not 0 < self.lr_final <= self.lr_init:
            raise ConfigError(f"optim: need 0 < lr_final <= lr_init, got {self.lr_final} and {self.lr_init}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {self.betas}")
        for name in ("eps", "weight_decay", "grad_clip", "l2wrap"):
            if getattr(self, name) < 0:
                raise ConfigError(f"optim.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(kw_only=True)
class StageSection:
    ctx_len: int = 512
    """Training context length of this stage."""
    tokens: int = 1_000_000
    """Token budget of this stage."""
    micro_bsz: int = 8
    """Sequences per GPU per forward pass."""
    tokens_per_step: int | None = None
    """Tokens per optimizer step over all GPUs (gradient accumulation is derived); None means
    micro_bsz * ctx_len * world size (no accumulation)."""
    lr_init: float | None = None
    """This stage's peak learning rate (None: optim.lr_init)."""
    lr_final: float | None = None
    """This stage's final learning rate (None: optim.lr_final)."""
    segment_len: int | None = None
    """Train on segments of this many tokens with the recurrent state carried across them, so
    activation memory is that of one segment (recurrent architectures only); None means the whole
    ctx_len at once."""
    bptt: int | Literal["all"] = "all"
    """With segment_len: how many segments the gradient flows back through. all (or 0): through
    every segment, the exact gradient of the whole ctx_len; k: the state is detached after every
    k segments (1: each segment starts from a detached state; k >= the number of segments is all)."""

    def __post_init__(self) -> None:
        for name in ("ctx_len", "tokens", "micro_bsz"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"stages[].{name} must be positive, got {getattr(self, name)}")
        if self.segment_len is not None and (self.segment_len <= 0 or self.ctx_len % self.segment_len):
            raise ConfigError(
                f"stages[].segment_len={self.segment_len} must be positive and divide ctx_len={self.ctx_len}"
            )
        if self.bptt != "all" and self.bptt < 0:
            raise ConfigError(f"stages[].bptt={self.bptt} must be 'all' or a number of segments >= 0")
        if self.bptt != "all" and not self.segmented:
            raise ConfigError(
                f"stages[].bptt={self.bptt} applies to segments: set a segment_len shorter than "
                f"ctx_len={self.ctx_len}, or remove bptt"
            )

    @property
    def bptt_segments(self) -> int:
        """bptt as a number: segments per gradient group, 0 for all."""
        return 0 if self.bptt == "all" else self.bptt

    @property
    def segmented(self) -> bool:
        """Whether this stage trains in segments shorter than ctx_len."""
        return self.segment_len is not None and self.segment_len < self.ctx_len


def check_tokens_per_step(tokens: int, stage: StageSection, world_size: int, where: str) -> None:
    """Raise unless `tokens` per step split into whole micro-batches of `stage` on `world_size`
    processes; `where` names the number's origin (a key, or the run's checkpoints)."""
    if tokens % (stage.micro_bsz * stage.ctx_len * world_size):
        raise ConfigError(
            f"{where} {tokens} tokens per step, not a multiple of micro_bsz * ctx_len * "
            f"world size = {stage.micro_bsz} * {stage.ctx_len} * {world_size}: choose a world size "
            "or micro_bsz that divides it"
        )


@dataclass(kw_only=True)
class TrainerSection:
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    """Where to train."""
    devices: int = 1
    """Processes (GPUs, or CPU processes for DDP on gloo) per node."""
    num_nodes: int = 1
    """Nodes."""
    strategy: StrategyName = "auto"
    """auto: the sharded engine (ZeRO) on several GPUs, DDP for several CPU processes, else one
    device (train/parallel/execution.py)."""
    zero_stage: Literal[1, 2, 3] = 2
    """ZeRO stage of the sharded engine."""
    offload_optimizer: bool = False
    """Sharded engine: keep optimizer states on the CPU."""
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed", "bf16-true"] = "auto"
    """auto: bf16-mixed on GPU, 32 on CPU."""
    grad_checkpointing: Literal["selective"] | bool = False
    """Recompute each block's activations in the backward pass. selective: keep the outputs of the
    matmuls, attention and recurrence kernels, and recompute only the rest (norms, activations,
    elementwise work): more memory than true, no second matmul."""
    compile: Literal["auto"] | bool = "auto"
    """torch.compile each block (Inductor). auto: on when training on GPUs (1.5x the eager step
    on RWKV-LM's demo recipe, docs/perf.md), off on the CPU (Inductor's C++ build of every block
    takes minutes there)."""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = (
        "default"
    )
    """torch.compile's mode for the blocks when compile is on. reduce-overhead replays each block's
    kernels as a CUDA graph (one launch instead of hundreds: for small models whose step waits on
    kernel launches; the graphs keep their memory in a pool of their own, which can raise the peak);
    max-autotune also searches matmul configurations (minutes more compile time), with CUDA
    graphs; max-autotune-no-cudagraphs without them."""
    fused_loss: bool = True
    """Compute head, cross entropy and L2Wrap in chunks of rows, never holding the float32 logits
    of the whole batch (same loss and gradients as the plain form within float32 rounding)."""
    loss_chunk_tokens: int = 4096
    """fused_loss: rows (tokens) of logits formed at once."""
    deterministic: bool = False
    """Ask PyTorch for deterministic kernels."""

    def __post_init__(self) -> None:
        if self.devices <= 0 or self.num_nodes <= 0:
            raise ConfigError(
                f"trainer.devices and num_nodes must be positive, got {self.devices}, {self.num_nodes}"
            )
        if self.loss_chunk_tokens <= 0:
            raise ConfigError(f"trainer.loss_chunk_tokens must be positive, got {self.loss_chunk_tokens}")
        if self.compile_mode != "default" and self.compile is False:
            raise ConfigError(
                f"trainer.compile_mode = {self.compile_mode} needs trainer.compile true or auto (it is false)"
            )


@dataclass(kw_only=True)
class CheckpointSection:
    every_steps: int = 1000
    """Save a full checkpoint every this many optimizer steps (and at the end of each stage)."""
    keep_last: int = 3
    """Full checkpoints kept; older ones are deleted after a newer one is complete."""
    snapshot_every_steps: int = 0
    """Also write RWKV-LM-layout .pth weights every this many steps (0: never)."""
    snapshot_dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    """Floating-point type of the snapshot weights."""

    def __post_init__(self) -> None:
        if self.every_steps <= 0 or self.keep_last <= 0 or self.snapshot_every_steps < 0:
            raise ConfigError(
                "checkpoint: every_steps and keep_last must be positive, snapshot_every_steps >= 0"
            )


@dataclass(kw_only=True)
class LogSection:
    every_steps: int = 10
    """Log metrics every this many optimizer steps."""
    wandb: Literal["disabled", "offline", "online"] = "offline"
    """Weights & Biases mode."""
    project: str = "skein"
    """wandb project."""
    progress_bar: bool = True
    """Show a progress bar with tokens/s and ETA."""
    peak_tflops: float | None = None
    """Peak TFLOP/s of one device for MFU (None: known GPUs are looked up, otherwise no MFU)."""


@dataclass(kw_only=True)
class EvalSection:
    every_steps: int = 0
    """Evaluate every this many optimizer steps and at the end of each stage (0: never)."""
    val: list[str] = field(default_factory=list)
    """Held-out binidx prefixes (e.g. the `<output>_val` that `skein prepare --val_fraction` writes)."""
    val_samples: int = 64
    """Samples of the stage's ctx_len in the validation loss (the same ones every time)."""
    micro_bsz: int = 8
    """Sequences per forward pass during evaluation."""

    def __post_init__(self) -> None:
        if self.every_steps < 0 or self.val_samples <= 0 or self.micro_bsz <= 0:
            raise ConfigError("eval: every_steps must be >= 0, val_samples and micro_bsz positive")
        if self.every_steps and not self.val:
            raise ConfigError("eval.every_steps is set but eval.val names no held-out shards")


def _default_env() -> dict[str, str]:
    # NVLink SHARP (NVLS) needs multicast support that shared or virtualised nodes often lack;
    # asynchronous error handling makes a hung collective fail instead of holding the allocation.
    return {"NCCL_NVLS_ENABLE": "0", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1"}


@dataclass(kw_only=True)
class SlurmSection:
    partition: str | None = None
    """`#SBATCH --partition` (None: the cluster's default); `skein submit --partition` overrides."""
    time: str | None = None
    """`#SBATCH --time`, e.g. 2-00:00:00 (None: the partition's limit); `--time` overrides."""
    account: str | None = None
    """`#SBATCH --account` (None: the user's default); `--account` overrides."""
    qos: str | None = None
    """`#SBATCH --qos` (None: the default); `--qos` overrides."""
    signal_seconds: int = 120
    """SIGUSR1 this many seconds before the time limit: the job saves a checkpoint and stops."""
    requeue: bool = True
    """After a signal or run.stop_after_steps stopped the run, `scontrol requeue` the job so it
    resumes from that checkpoint."""
    cpus_per_task: int = 8
    """CPU cores per task (one task per GPU; per training process on the CPU)."""
    env: dict[str, str | None] = field(default_factory=dict)
    """Environment exported to every task, added to skein's defaults (NCCL_NVLS_ENABLE=0,
    TORCH_NCCL_ASYNC_ERROR_HANDLING=1): a key given here adds a variable or replaces that one
    default; null removes a default (`slurm.env.NCCL_NVLS_ENABLE=null`)."""
    sbatch_options: list[str] = field(default_factory=list)
    """Extra `#SBATCH` options, e.g. ["--exclusive", "--mem=0"]."""
    template: str | None = None
    """sbatch template to render (None: slurm/train.sbatch of skein); see slurm/README.md."""

    def __post_init__(self) -> None:
        if self.signal_seconds <= 0 or self.cpus_per_task <= 0:
            raise ConfigError(
                f"slurm: signal_seconds and cpus_per_task must be positive, got {self.signal_seconds}, "
                f"{self.cpus_per_task}"
            )
        if self.time is not None and not re.fullmatch(r"(\d+-)?\d+(:\d{2}){0,2}", self.time):
            raise ConfigError(f"slurm.time: {self.time!r} is not a Slurm time such as 2-00:00:00 or 04:00:00")
        self.env = {**_default_env(), **self.env}
        for key, value in self.env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
                raise ConfigError(f"slurm.env: {key!r} is not an environment variable name")
            if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
                raise ConfigError(
                    f"slurm.env.{key}: expected a string or a number (null removes a default), got {value!r}"
                )
            self.env[key] = None if value is None else str(value)
        for option in self.sbatch_options:
            if not option.startswith("--"):
                raise ConfigError(f"slurm.sbatch_options: {option!r} should look like --exclusive or --mem=0")


@dataclass(kw_only=True)
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelConfig
    """Model config; `arch` selects the architecture and the remaining keys its fields."""
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    stages: list[StageSection] = field(default_factory=lambda: [StageSection()])
    trainer: TrainerSection = field(default_factory=TrainerSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    eval: EvalSection = field(default_factory=EvalSection)
    slurm: SlurmSection = field(default_factory=SlurmSection)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("stages: at least one stage is needed")
        for i, stage in enumerate(self.stages):
            if stage.segmented and not self.model.recurrent:
                from skein.rwkv.models import ModelConfig  # imports torch: only for this message

                recurrent = [arch for arch, c in ModelConfig.variants().items() if c.recurrent]
                raise ConfigError(
                    f"stages[{i}].segment_len={stage.segment_len}: model.arch={self.model.arch} carries "
                    f"no fixed-size recurrent state (its key/value cache grows with the context); segments "
                    f"need one of {recurrent}, or remove segment_len"
                )
        for i, stage in enumerate(self.stages):
            for name in ("lr_init", "lr_final"):
                lr = getattr(stage, name)
                if lr is not None and not 0 < lr < 1:
                    raise ConfigError(f"stages[{i}].{name}={lr} must lie in (0, 1), e.g. 3e-4")
            lr_init, lr_final = self.stage_lrs(i)
            if lr_final > lr_init:
                raise ConfigError(
                    f"stages[{i}]: lr_final={lr_final} exceeds lr_init={lr_init}; lower lr_final or raise lr_init"
                )
        world = self.trainer.devices * self.trainer.num_nodes
        for i, stage in enumerate(self.stages):
            if stage.tokens_per_step is not None:
                check_tokens_per_step(stage.tokens_per_step, stage, world, f"stages[{i}].tokens_per_step is")

    @classmethod
    def type_hints(cls) -> dict[str, Any]:
        """The field types, the model's config base imported now (typed.from_dict asks for them)."""
        from skein.rwkv.models import ModelConfig

        return typing.get_type_hints(cls, localns={"ModelConfig": ModelConfig})

    def stage_lrs(self, index: int) -> tuple[float, float]:
        """(lr_init, lr_final) of stage `index`: its own, else optim's."""
        stage = self.stages[index]
        return stage.lr_init or self.optim.lr_init, stage.lr_final or self.optim.lr_final

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run YAML, apply `key=value` overrides, validate, and return the typed config."""
    d = read_config(path, overrides)
    try:
        return from_dict(RunConfig, d)
    except ConfigError as e:
        raise located(e, path, overrides) from e


def read_config(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """A run YAML as a mapping with the `key=value` overrides applied (not validated)."""
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist{_near_matches(p)}")
        with open(p) as f:
            d = yaml.safe_load(f) or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: the top level must be a mapping")
    for o in overrides or []:
        apply_override(d, o)
    return d


def located(e: ConfigError, path: str | Path | None, overrides: list[str] | None) -> ConfigError:
    """A validation error prefixed with where its value came from (see `_origin`)."""
    return ConfigError(f"{_origin(str(e), path, overrides or [])}: {e}")


def _origin(message: str, path: str | Path | None, overrides: list[str]) -> str:
    """Where the value an error names came from: the command-line override that set its key (or a
    key above or below it), else the YAML file."""
    m = re.match(r"([\w.\[\]]+)[:= ]", message)
    # stages[0].x and stages[].x (a stage's own check, which knows no index) as stages.0.x, stages.*.x
    key = re.sub(r"\[(\d*)\]", lambda i: "." + (i.group(1) or "*"), m.group(1)).split(".") if m else None
    for o in overrides:
        given = o.split("=", 1)[0].split(".")
        if key is not None and all(a in (b, "*") for a, b in zip(key, given)):
            return f"command-line override {o}"
    return str(path) if path is not None else "config"


def _near_matches(path: Path) -> str:
    """`; did you mean ...?` naming the YAML file that differs from `path` only in case, else up to
    three whose paths are close to it, closest first."""
    base = path.parent
    while not base.is_dir() and base != base.parent:
        base = base.parent
    if not base.is_dir() or base == base.parent:  # never search a whole file system
        return ""
    found = sorted(str(f) for pattern in ("*.yaml", "*/*.yaml", "*/*/*.yaml") for f in base.glob(pattern))
    names = [f for f in found if f.lower() == str(path).lower()]
    if not names:
        lower = {f.lower(): f for f in found[:2000]}
        names = [lower[f] for f in difflib.get_close_matches(str(path).lower(), list(lower), n=3, cutoff=0.8)]
    return f"; did you mean {' or '.join(names)}?" if names else ""


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (what each run directory stores; `--print_config` adds the
    derived numbers, plan.derived_comment)."""
    return yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False)
