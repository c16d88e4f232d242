"""The results directory of an evaluation: args.json, <suite>.csv, results.json and plots, each
written to a temporary name in the directory and renamed once complete. A directory that is not
empty is refused, so nothing saved before is overwritten."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from skein.train.checkpoints.weights import run_dir_of
from skein.train.typed import ConfigError


class ResultsDir:
    """A new or empty results directory; json/csv/figure write one named file each, atomically."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir() and any(self.path.iterdir()):
            raise ConfigError(f"--output {self.path}: is not empty; choose another --output or move it away")
        self.path.mkdir(parents=True, exist_ok=True)

    def _atomic(self, name: str, write) -> Path:
        final = self.path / name
        tmp = self.path / f".{name}.tmp"
        write(tmp)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise OSError(f"{tmp}: nothing was written")
        os.replace(tmp, final)
        return final

    def json(self, name: str, obj: Any) -> Path:
        def write(p: Path) -> None:
            p.write_text(json.dumps(obj, indent=2, default=str) + "\n")

        return self._atomic(name, write)

    def csv(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
        def write(p: Path) -> None:
            with open(p, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                w.writerows(rows)

        return self._atomic(name, write)

    def figure(self, name: str, fig: Any) -> Path:
        import matplotlib.pyplot as plt

        def write(p: Path) -> None:
            fig.savefig(p, format="png", dpi=120, bbox_inches="tight")

        try:
            return self._atomic(name, write)
        finally:
            plt.close(fig)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width text table (floats with 4 decimals)."""
    cells = [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


RUNLESS_ROOT = Path("runs") / "eval"
"""Where the suites that evaluate no run (mqar, state) write by default: runs/eval/<suite>/."""


def results_path(suite: str, output: str | None, model: str | Path | None = None) -> Path:
    """--output when given; else <run>/eval/<suite> for a model inside a run directory, else
    runs/eval/<suite>. A default that already holds results gets the next free -2, -3, ... so
    nothing saved before is touched."""
    if output:
        return Path(output)
    run = run_dir_of(model) if model is not None else None
    base = (run / "eval" if run is not None else RUNLESS_ROOT) / suite
    path, n = base, 1
    while path.is_dir() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path
