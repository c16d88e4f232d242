"""The `skein` command. Each subcommand is one function in data/, train/ or rwkv/; this file only
wires them (flags come from the functions' signatures and docstrings).

    skein prepare [--inputs ...] --output PREFIX --tokenizer SPEC
    skein train CONFIG.yaml [dotted.key=value | --dotted.key value ...] [--resume [BOOL]]
                [--init_from CKPT] [--print_config]
    skein params CONFIG.yaml
    skein plot-lr CONFIG.yaml --output lr.png
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable
from typing import Any

# subcommand -> "module:function" (or a group of them, e.g. `skein bench kernels`).
COMMANDS: dict[str, str | dict[str, str]] = {
    "prepare": "skein.data.prepare:prepare",
    "train": "skein.train.run:train",
    "params": "skein.train.inspect:params",
    "plot-lr": "skein.train.inspect:plot_lr",
    "export": "skein.train.export:export",
    "import": "skein.train.export:import_weights",
    "generate": "skein.train.generate:generate",
    "bench": {"kernels": "skein.train.bench_kernels:bench_kernels", "train": "skein.train.bench:bench_train"},
    "submit": "skein.train.submit:submit",
    "status": "skein.train.status:status",
    "eval": {s: f"skein.train.eval.{s}:{s}" for s in ("loss", "length", "mqar", "state")},
}


def _resolve(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="skein train", description="Train the stages of a run config, resuming from its run directory."
    )
    p.add_argument("config", help="run YAML (see configs/)")
    p.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="dotted overrides, e.g. optim.lr_init=3e-4 stages.0.tokens=1e9 (or --optim.lr_init 3e-4)",
    )
    p.add_argument(
        "--resume",
        type=_yes_no,
        nargs="?",
        const=True,
        default=True,
        help="continue from the newest checkpoint in run.out_dir (default: true; false refuses a run dir with checkpoints)",
    )
    p.add_argument("--init_from", default=None, help="start from these weights (fresh optimizer)")
    p.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    return p


def _dashed_overrides(argv: list[str]) -> list[str]:
    """LightningCLI-style `--section.key value` / `--section.key=value` as `section.key=value`;
    the other arguments pass through unchanged."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0]
        if arg.startswith("--") and "." in name:
            if "=" in arg:
                out.append(arg[2:])
            elif i + 1 < len(argv):
                out.append(f"{name}={argv[i + 1]}")
                i += 1
            else:
                raise SystemExit(f"skein train: {arg} needs a value")
        else:
            out.append(arg)
        i += 1
    return out


def _yes_no(v: str) -> bool:
    if v.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")
    return v.lower() in ("true", "yes", "1")


def _function_parser(fn: Callable[..., Any]) -> Any:
    from jsonargparse import ArgumentParser

    sub = ArgumentParser(description=_summary(fn))
    sub.add_function_arguments(fn, as_positional=True, fail_untyped=False)
    return sub


def _summary(fn: Callable[..., Any]) -> str:
    return (fn.__doc__ or "").strip().split("\n")[0]


def build_parser() -> Any:
    """The jsonargparse parser of every subcommand but `train` (whose free-form overrides it
    parses with argparse)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="skein", description="Pretrain recurrent-state language models.")
    subs = parser.add_subcommands(required=True, dest="command")
    for name, target in COMMANDS.items():
        if isinstance(target, dict):
            group = ArgumentParser(description=f"skein {name} subcommands")
            subs.add_subcommand(name, group, help=f"{name}: {', '.join(target)}")
            group_subs = group.add_subcommands(required=True, dest="command")
            for sub_name, sub_target in target.items():
                fn = _resolve(sub_target)
                group_subs.add_subcommand(sub_name, _function_parser(fn), help=_summary(fn))
        elif name == "train":
            fn = _resolve(target)
            subs.add_subcommand(name, ArgumentParser(description=_summary(fn)), help=_summary(fn))
        else:
            fn = _resolve(target)
            subs.add_subcommand(name, _function_parser(fn), help=_summary(fn))
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    from skein.train.config import ConfigError

    if argv and argv[0] == "train":
        a = _train_parser().parse_args(_dashed_overrides(argv[1:]))
        name, fn = "train", _resolve(COMMANDS["train"])
        kwargs = {
            "config": a.config,
            "overrides": a.overrides,
            "resume": a.resume,
            "init_from": a.init_from,
            "print_config": a.print_config,
        }
    elif argv and argv[0] == "submit":  # Slurm-style flags (--gpus-per-node, --dry-run)
        from skein.train.submit import parse_args

        name, fn, kwargs = "submit", _resolve(COMMANDS["submit"]), parse_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)
        name, target, sub_args = args.command, COMMANDS[args.command], args[args.command]
        if isinstance(target, dict):
            name, target, sub_args = (
                f"{name} {sub_args.command}",
                target[sub_args.command],
                sub_args[sub_args.command],
            )
        fn = _resolve(target)
        accepted = inspect.signature(fn).parameters
        kwargs = {k: v for k, v in vars(sub_args).items() if k in accepted}
    try:
        result = fn(**kwargs)
    except ConfigError as e:
        sys.exit(f"skein {name}: config error: {e}")
    if isinstance(result, dict) and name == "train":
        print(f"train: {result}")


if __name__ == "__main__":
    main()
