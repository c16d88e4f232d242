"""Looking at a run config without training: the model's parameter count (counted on the meta
device, so no memory is allocated and nothing is initialised) and the learning-rate schedule over
the planned tokens, with the stage boundaries marked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from skein.train.config import RunConfig, load_config
from skein.train.plan import stage_plans


def params(config: str, overrides: list[str] | None = None) -> int:
    """Print the parameter count of the model a run config describes.

    Args:
        config: run YAML.
        overrides: dotted key=value overrides.
    """
    import torch

    from skein.rwkv.models import model_class

    cfg = load_config(config, overrides)
    cls = model_class(cfg.model.arch)
    # shapes only: without the initialisation, whose meta-tensor maths would import torch's compiler
    shapes = type(cls.__name__, (cls,), {"reset_parameters": lambda self: None})
    with _skip_in_place_on_meta(), torch.device("meta"):
        model = shapes(cfg.model)
    n, n_emb = model.num_params(), model.emb.weight.numel()
    print(f"{cfg.model.arch}: {n:,} parameters ({n - n_emb:,} without the input embedding)")
    return n


def _skip_in_place_on_meta() -> object:
    """A torch function mode under which in-place calls on meta tensors (torch.nn.init's normal_,
    kaiming_uniform_, ... in the layers' own constructors) do nothing: a meta tensor has no values."""
    import torch
    from torch.overrides import TorchFunctionMode

    class SkipInPlaceOnMeta(TorchFunctionMode):
        def __torch_function__(
            self, func: Callable[..., Any], types: Any, args: tuple = (), kwargs: dict | None = None
        ) -> Any:
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            target = args[0] if args else kwargs.get("tensor")
            if (
                name.endswith("_")
                and not name.startswith("__")
                and isinstance(target, torch.Tensor)
                and target.is_meta
            ):
                return target
            return func(*args, **kwargs)

    return SkipInPlaceOnMeta()


def stage_boundaries(cfg: RunConfig) -> list[int]:
    """Total tokens at the end of each stage but the last."""
    out, before = [], 0
    for plan in stage_plans(cfg)[:-1]:
        before += plan.total_tokens
        out.append(before)
    return out


def lr_curve(config: str, overrides: list[str] | None = None, points: int = 400) -> list[tuple[int, float]]:
    """(total tokens, lr) pairs over every stage of a run config (auto_exp shown without decay)."""
    cfg = load_config(config, overrides)
    out, before = [], 0
    for si, plan in enumerate(stage_plans(cfg)):
        total = plan.total_tokens
        lr_init, lr_final = cfg.stage_lrs(si)
        n = max(points // len(cfg.stages), 2)
        for i in range(n):
            t = total * i // (n - 1)
            lr = cfg.schedule.lr(t, lr_init, lr_final, total, budget_tokens=cfg.stages[si].tokens)
            out.append((before + t, lr))
        before += total
    return out


def plot_lr(config: str, output: str = "lr.png", overrides: list[str] | None = None) -> str:
    """Plot learning rate against tokens for a run config, without training.

    Args:
        config: run YAML.
        output: PNG path to write.
        overrides: dotted key=value overrides.
    """
    from skein.train.commands.plots import pyplot, save_figure

    cfg = load_config(config, overrides)
    curve = lr_curve(config, overrides)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([t for t, _ in curve], [lr for _, lr in curve])
    for i, t in enumerate(stage_boundaries(cfg)):
        ax.axvline(t, color="gray", ls="--", lw=0.8, label="stage boundary" if i == 0 else None)
    ax.set_xlabel("tokens")
    ax.set_ylabel("learning rate")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(cfg.stages) > 1:
        ax.legend()
    save_figure(fig, Path(output))
    print(f"wrote {output}")
    return output
