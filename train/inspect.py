"""Looking at a run config without training: the model's parameter count and the learning-rate
schedule over the planned tokens."""

from __future__ import annotations

from pathlib import Path

from skein.rwkv import build_model
from skein.train.config import load_config
from skein.train.module import StagePlan
from skein.train.schedule import Schedule


def params(config: str, overrides: list[str] | None = None) -> int:
    """Print the parameter count of the model a run config describes.

    Args:
        config: run YAML.
        overrides: dotted key=value overrides.
    """
    cfg = load_config(config, overrides)
    model = build_model(cfg.model_config())
    n, n_emb = model.num_params(), model.emb.weight.numel()
    print(f"{cfg.model['arch']}: {n:,} parameters ({n - n_emb:,} without the input embedding)")
    return n


def lr_curve(config: str, overrides: list[str] | None = None, points: int = 400) -> list[tuple[int, float]]:
    """(total tokens, lr) pairs over every stage of a run config (auto_exp shown without decay)."""
    cfg = load_config(config, overrides)
    world = cfg.trainer.devices * cfg.trainer.num_nodes
    out, before = [], 0
    for stage in cfg.stages:
        plan = StagePlan(stage, world)
        total = plan.steps * plan.tokens_per_step
        sched = Schedule(
            kind=cfg.schedule.kind,
            lr_init=stage.lr_init or cfg.optim.lr_init,
            lr_final=stage.lr_final or cfg.optim.lr_final,
            total_tokens=total,
            warmup_tokens=cfg.schedule.warmup_tokens,
            decay_fraction=cfg.schedule.decay_fraction,
        )
        n = max(points // len(cfg.stages), 2)
        out += [(before + total * i // (n - 1), sched.lr(total * i // (n - 1))) for i in range(n)]
        before += total
    return out


def plot_lr(config: str, output: str = "lr.png", overrides: list[str] | None = None) -> str:
    """Plot learning rate against tokens for a run config, without training.

    Args:
        config: run YAML.
        output: PNG path to write.
        overrides: dotted key=value overrides.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = lr_curve(config, overrides)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([t for t, _ in curve], [lr for _, lr in curve])
    ax.set_xlabel("tokens")
    ax.set_ylabel("learning rate")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)
    print(f"wrote {output}")
    return output
