"""`skein eval`: the evaluation suites, one function each.

    loss    held-out loss, perplexity and bits per byte of a checkpoint or exported weights
    length  loss by position up to several times the training context, RNN-chunked
    mqar    multi-query associative recall sweep (Zoology)
    state   word problems on S3, S5, A5, Z60 (state tracking, DeltaProduct paper)
    harness lm-evaluation-harness tasks (arc_easy, hellaswag, wikitext, local YAMLs) on any model

Each writes a results directory (args.json, CSV, results.json, PNG): --output, else under the
evaluated run (<run>/eval/<suite>/), else runs/eval/<suite>/; it prints a table and the path.
"""

from __future__ import annotations

import importlib
from typing import Any

SUITES = {
    "loss": "skein.train.eval.loss:loss",
    "length": "skein.train.eval.length:length",
    "mqar": "skein.train.eval.mqar:mqar",
    "state": "skein.train.eval.state:state",
    "harness": "skein.train.eval.harness:harness",
}


def evaluate(suite: str, **kwargs: Any) -> dict[str, Any]:
    """Run one suite by name with its keyword arguments; returns its results."""
    if suite not in SUITES:
        from skein.train.typed import ConfigError

        raise ConfigError(f"unknown eval suite {suite!r}; choose one of {sorted(SUITES)}")
    module, name = SUITES[suite].split(":")
    return getattr(importlib.import_module(module), name)(**kwargs)
