"""Time training steps of one run config on random tokens: peak GPU memory and tokens/s.

A stand-in for `skein bench train` with its interface, used by scripts/bench_long_context.sh when
that command is missing. It trains the first stage of CONFIG (after the dotted overrides) through
the real Lightning module, strategy, precision and checkpointing, on uniformly random token ids,
for --warmup steps that are not timed and then --steps that are, and writes
{"peak_mem_gb", "tokens_per_s", ...} to --json (peak_mem_gb: torch.cuda.max_memory_allocated over
the timed steps, GiB; 0 on the CPU).

    python scripts/bench_train_step.py configs/rwkv7/1.5b.yaml stages.0.ctx_len=4096 --steps 5 --warmup 2 --json f.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from skein.rwkv.models import build_model
from skein.train.config import load_config
from skein.train.module import LMModule
from skein.train.strategy import apply_grad_checkpointing, build_strategy


class RandomTokens(Dataset):
    """Sample i: ctx_len + 1 random ids (seeded by i), split into inputs and next-token targets."""

    def __init__(self, vocab: int, ctx_len: int, n: int) -> None:
        self.vocab, self.ctx_len, self.n = vocab, ctx_len, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        idx = torch.randint(0, self.vocab, (self.ctx_len + 1,), generator=g)
        return idx[:-1], idx[1:]


class StepTimer(L.Callback):
    """Resets the peak-memory counter and starts the clock after `warmup` optimizer steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.last_step = warmup, 0.0, 0.0, 0

    def on_train_batch_end(self, trainer: L.Trainer, module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.last_step:
            return
        self.last_step = trainer.global_step
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.synchronize()
        if trainer.global_step == self.warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()
        self.t1 = time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", type=Path, required=True)
    a = p.parse_args()
    if a.warmup < 1 or a.steps < 1:
        p.error(
            f"--warmup {a.warmup} and --steps {a.steps} must be at least 1 (the clock starts after the warmup)"
        )
    cfg = load_config(a.config, a.overrides)
    stage = cfg.stages[0]
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    L.seed_everything(cfg.run.seed, verbose=False)
    model = build_model(cfg.model_config())
    if cfg.trainer.grad_checkpointing:
        apply_grad_checkpointing(model)
    module = LMModule(cfg, 0, world, model)
    total = a.warmup + a.steps
    timer = StepTimer(a.warmup)
    trainer = L.Trainer(
        **build_strategy(cfg.trainer),
        max_steps=total,
        accumulate_grad_batches=module.plan.accumulate,
        gradient_clip_val=cfg.optim.grad_clip or None,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        callbacks=[timer],
    )
    n = total * module.plan.accumulate * stage.micro_bsz
    data = DataLoader(
        RandomTokens(cfg.model_config().vocab_size, stage.ctx_len, n), batch_size=stage.micro_bsz
    )
    trainer.fit(module, train_dataloaders=data)
    tokens = a.steps * module.plan.tokens_per_step
    result = {
        "ctx_len": stage.ctx_len,
        "segment_len": stage.segment_len,
        "bptt": stage.bptt,
        "grad_checkpointing": cfg.trainer.grad_checkpointing,
        "tokens_per_step": module.plan.tokens_per_step,
        "steps": a.steps,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        "tokens_per_s": tokens / (timer.t1 - timer.t0),
        "last_loss": module.last_step_loss,
    }
    if trainer.is_global_zero:
        a.json.write_text(json.dumps(result, indent=1))
        print(json.dumps(result))


if __name__ == "__main__":
    main()
