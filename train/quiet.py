"""Quiet by default: the library chatter every run would otherwise print (Lightning's device and
strategy banners, its litmodels/litlogger tips, torch's pytree deprecation and `weights_only`
warnings on each checkpoint load, the sharded engine's info logs). `skein --verbose` leaves them on."""

from __future__ import annotations

import logging
import warnings

LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
)
WARNINGS = (
    r".*_register_pytree_node is deprecated",
    r".*torch\.utils\._pytree.*deprecated",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r"You are using `torch\.load` with `weights_only=False`",
    r".*weights_only.*",
    r".*litmodels.*|.*litlogger.*",
    r".*does not have many workers which may be a bottleneck.*",
    r".*is smaller than the logging interval.*",
    r".*The `srun` command is available on your system but is not used.*",
)


def silence_libraries() -> None:
    """Drop the messages listed above (process-wide; warnings and log records of other kinds
    still show)."""
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    from skein.train.parallel.execution import ENGINE_LOGGERS

    for name in (*LOGGERS, *ENGINE_LOGGERS):
        logging.getLogger(name).setLevel(logging.WARNING)
