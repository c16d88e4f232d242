"""The numbers a run config implies but never states: per stage, the samples per optimizer step,
gradient accumulation, tokens per step and steps; per stage and data source, the magic prime.

They are derived once per run (`stage_plans`, with the tokens per step the run's checkpoints
recorded when it resumes) and passed to what needs them; `--print_config` shows them as a comment
block that is not read back.
"""

from __future__ import annotations

import math

from skein.train.config import RunConfig, StageSection, check_tokens_per_step


class StagePlan:
    """The derived numbers of one stage: samples per optimizer step, accumulation, steps.
    `recorded` is the stage's tokens per step from the run's checkpoints (fixed when the stage
    first started), which a resume on another world size keeps."""

    def __init__(
        self, stage: StageSection, world_size: int, index: int = 0, recorded: int | None = None
    ) -> None:
        self.ctx_len = stage.ctx_len
        self.world_size = world_size
        per_pass = stage.micro_bsz * world_size
        self.depends_on_world = stage.tokens_per_step is None and recorded is None
        tokens_per_step = recorded or stage.tokens_per_step or per_pass * stage.ctx_len
        where = "the run's checkpoints record" if recorded else f"stages[{index}].tokens_per_step is"
        check_tokens_per_step(tokens_per_step, stage, world_size, where)
        self.tokens_per_step = tokens_per_step
        self.global_batch = tokens_per_step // stage.ctx_len
        self.accumulate = self.global_batch // per_pass
        self.steps = math.ceil(stage.tokens / tokens_per_step)

    @property
    def total_tokens(self) -> int:
        """Tokens the stage trains on (its budget rounded up to whole optimizer steps)."""
        return self.steps * self.tokens_per_step


def stage_plans(cfg: RunConfig, recorded: list[int] | None = None) -> list[StagePlan]:
    """One plan per stage, for the world size the trainer section asks for; `recorded` holds the
    tokens per step a run's checkpoints fixed for the stages it has started."""
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    kept = recorded or []
    return [StagePlan(s, world, i, kept[i] if i < len(kept) else None) for i, s in enumerate(cfg.stages)]


def _magic_primes(cfg: RunConfig, ctx_len: int) -> str:
    from skein.data.dataset import open_source
    from skein.data.sampler import MagicPrimeOrder

    out = []
    for prefix in cfg.data.train:
        try:
            n = open_source(prefix).num_tokens
            out.append(f"{MagicPrimeOrder(n, ctx_len).p} ({prefix}: {n:,} tokens)")
        except (OSError, ValueError):
            out.append(f"? ({prefix}: no readable shards yet)")
    return ", ".join(out) or "? (data.train is empty)"


def derived_comment(cfg: RunConfig, plans: list[StagePlan], with_data: bool = True) -> str:
    """The derived numbers as YAML comments (`--print_config` appends them; nothing reads them)."""
    lines = ["# derived (computed from the config above; not read back):"]
    for i, (stage, plan) in enumerate(zip(cfg.stages, plans)):
        world = (
            f"micro_bsz * ctx_len * world size ({plan.world_size}); changes with the world size"
            if plan.depends_on_world
            else "fixed: accumulation adapts to the world size"
        )
        lines += [
            f"#   stages[{i}]: {plan.steps:,} steps of {plan.tokens_per_step:,} tokens ({world})",
            f"#     {plan.global_batch} sequences per step = micro_bsz {stage.micro_bsz} x world "
            f"{plan.world_size} x accumulation {plan.accumulate}; {plan.total_tokens:,} tokens in all",
        ]
        if with_data:
            lines.append(f"#     magic prime: {_magic_primes(cfg, stage.ctx_len)}")
    return "\n".join(lines) + "\n"
