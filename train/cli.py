"""The `skein` command. Each subcommand is one function in data/, train/ or rwkv/; this file only
wires them. Flags come from the functions' signatures and docstrings, read from their source
(cli_args.py), so `--help` imports neither torch nor Lightning; a function is imported to run.

    skein [--version] [--debug] [--verbose] COMMAND ...
    skein prepare [--inputs FILE ...] --output PREFIX --tokenizer SPEC
    skein train CONFIG.yaml [key=value | --key value ...] [--resume [BOOL]] [--init_from CKPT]
                [--print_config]
    skein params CONFIG.yaml [key=value ...]
    skein plot-lr CONFIG.yaml --output lr.png [key=value ...]

Every config command also takes `--config CONFIG.yaml`. Errors a user can fix print one line,
`skein <command>: error: ...`, and exit 2; `--debug` (or SKEIN_DEBUG=1) shows the traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from skein.train import cli_args, quiet
from skein.train.eval import SUITES as EVAL_SUITES

# subcommand -> "module:function" (or a group of them, e.g. `skein bench kernels`).
COMMANDS: dict[str, str | dict[str, str]] = {
    "prepare": "skein.data.prepare:prepare",
    "train": "skein.train.loop.run:train",
    "params": "skein.train.commands.inspect:params",
    "plot-lr": "skein.train.commands.inspect:plot_lr",
    "export": "skein.train.commands.export:export",
    "import": "skein.train.commands.export:import_weights",
    "generate": "skein.train.commands.generate:generate",
    "bench": {
        "kernels": "skein.rwkv.ops.bench:bench_kernels",
        "train": "skein.train.commands.bench:bench_train",
    },
    "submit": "skein.train.commands.submit:submit",
    "status": "skein.train.commands.status:status",
    "eval": EVAL_SUITES,
}
GLOBAL_FLAGS = ("--debug", "--verbose")


def _resolve(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("skein")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _help(prog: str, table: dict[str, str | dict[str, str]]) -> str:
    rows = []
    for name, target in table.items():
        summary = (
            f"subcommands: {', '.join(target)}"
            if isinstance(target, dict)
            else cli_args.read_signature(target).summary
        )
        rows.append(f"    {name:<10} {summary}")
    head = "Pretrain recurrent-state language models." if prog == "skein" else f"{prog} subcommands."
    return (
        f"usage: {prog} [--version] [--debug] [--verbose] COMMAND ...\n\n{head}\n\ncommands:\n"
        + "\n".join(rows)
        + f"\n\n`{prog} COMMAND --help` describes a command; --debug shows tracebacks, --verbose "
        "library messages.\n"
    )


def _select(argv: list[str]) -> tuple[str, str, list[str]]:
    """(program name, "module:function", the command's own arguments) for a command line."""
    table: dict[str, str | dict[str, str]] = COMMANDS
    prog = "skein"
    while True:
        if not argv or argv[0] in ("-h", "--help"):
            print(_help(prog, table), end="")
            raise SystemExit(0 if argv else 2)
        if argv[0] == "--version":
            print(f"skein {_version()}")
            raise SystemExit(0)
        name, argv = argv[0], argv[1:]
        if name not in table:
            print(
                f"{prog}: error: unknown command {name!r}; choose one of {', '.join(table)}", file=sys.stderr
            )
            raise SystemExit(2)
        prog, target = f"{prog} {name}", table[name]
        if isinstance(target, str):
            return prog, target, argv
        table = target


def train_arguments(argv: list[str]) -> dict[str, Any]:
    """The keyword arguments `skein train ARGV` calls train() with."""
    return cli_args.parse("skein train", cli_args.read_signature(str(COMMANDS["train"])), argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("SKEIN_DEBUG", "") not in ("", "0")
    verbose = "--verbose" in argv or os.environ.get("SKEIN_VERBOSE", "") not in ("", "0")
    argv = [a for a in argv if a not in GLOBAL_FLAGS]
    prog, target, args = _select(argv)
    from skein.train.errors import explain

    try:
        kwargs = cli_args.parse(prog, cli_args.read_signature(target), args)
        if kwargs.get("config") is not None and "overrides" in kwargs:
            from skein.train.config_check import check_config

            check_config(kwargs["config"], kwargs["overrides"])  # a typo is answered before torch loads
        fn = _resolve(target)
        if not verbose:  # after the import: Lightning sets its loggers' levels when imported
            quiet.silence_libraries()
        fn(**kwargs)
    except Exception as e:
        message = None if debug else explain(e)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
