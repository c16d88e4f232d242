"""`skein status RUN_DIR`: where a run stands, in one short block of text.

Read from the run directory alone: the resolved config.yaml (the stage plan), metrics.csv (the
last logged step, loss and tokens/s), the newest checkpoint's meta.json, and run.lock (the
process, host and Slurm job that hold the run, if any).
"""

from __future__ import annotations

import csv
from pathlib import Path

from skein.train.checkpoints.lock import LockInfo, is_stale, read_lock
from skein.train.config import load_config
from skein.train.plan import stage_plans
from skein.train.typed import ConfigError


def status(run_dir: str) -> str:
    """Print a run's stage, step, tokens, last loss, tokens/s, ETA, checkpoint and lock holder."""
    text = describe(Path(run_dir))
    print(text)
    return text


def describe(run_dir: Path) -> str:
    """The status block of `run_dir` (see `status`)."""
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml, so not a skein run directory (skein train writes one)")
    from skein.train.checkpoints.checkpoint import (
        latest_checkpoint,  # imports Lightning: after the check above
    )

    cfg = load_config(config)
    found = latest_checkpoint(run_dir)
    plans = stage_plans(cfg, found[1].tokens_per_step if found else None)
    total = sum(p.total_tokens for p in plans)
    row = last_row(run_dir / "metrics.csv")

    lines = [f"run        {cfg.run.name}  ({run_dir})"]
    if row is None:
        lines.append("progress   no step logged yet")
    else:
        si, step, tokens = int(row["stage"]), int(row["step"]), int(row["tokens"])
        lines.append(
            f"stage      {si + 1} of {len(plans)}  (ctx_len {cfg.stages[si].ctx_len}), "
            f"step {step} of {plans[si].steps}"
        )
        lines.append(f"tokens     {tokens:,} of {total:,} ({100 * tokens / total:.1f}%)")
        tok_s = float(row["tokens_per_s"]) if row.get("tokens_per_s") else 0.0
        lines.append(
            f"loss       {float(row['loss']):.4f}   tokens/s {tok_s:,.0f}   ETA {_eta(total - tokens, tok_s)}"
        )
    if found is None:
        lines.append("checkpoint none")
    else:
        path, meta = found
        done = "stage finished" if meta.stage_done else "mid-stage"
        lines.append(
            f"checkpoint {path.name}  (stage {meta.stage_index + 1}, step {meta.step}, "
            f"{meta.tokens_total:,} tokens, {done})"
        )
    lines.append(f"lock       {_lock_text(read_lock(run_dir))}")
    return "\n".join(lines)


def last_row(metrics: Path) -> dict[str, str] | None:
    """The last complete row of metrics.csv (a half-written last line is skipped)."""
    if not metrics.is_file():
        return None
    with open(metrics, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss") and r.get("time")]
    return rows[-1] if rows else None


def _lock_text(lock: LockInfo | None) -> str:
    if lock is None:
        return "free (no process holds the run)"
    state = "  (stale: that process is gone)" if is_stale(lock) else ""
    return lock.describe() + state


def _eta(tokens_left: int, tok_s: float) -> str:
    if tokens_left <= 0:
        return "done"
    if tok_s <= 0:
        return "unknown"
    s = int(tokens_left / tok_s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h:02d}h{m:02d}m" if d else f"{h}h{m:02d}m{s:02d}s"
