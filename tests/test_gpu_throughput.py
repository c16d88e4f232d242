"""scripts/gpu_throughput.py's CPU parts: the rows of each suite, --only, and the retry at half
the micro-batch."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "scripts" / "gpu_throughput.py")
gt = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(gt)


@pytest.mark.parametrize("gib", [79.2, 139.8])
def test_only_keeps_the_named_rows_in_order(gib: float) -> None:
    runs = gt.big_runs(gib)
    picked = gt.select(runs, "full ckpt, kernel_dots bf16")
    assert [r.name for r in picked] == [r.name for r in runs if "full ckpt" in r.name or "bf16" in r.name]
    assert len(picked) == 3 and picked[0].name.startswith("1.5B no ckpt, kernel_dots bf16")
    assert gt.select(runs, "") == runs
    assert [r.name for r in gt.select(gt.demo_runs(), "reduce-overhead")] == [
        "demo compile reduce-overhead, fused"
    ]


def test_only_that_names_nothing_lists_the_rows() -> None:
    with pytest.raises(
        SystemExit, match=r"--only 'zero3' names none of this suite's runs: demo eager, plain loss; "
    ):
        gt.select(gt.demo_runs(), "zero3")


def test_a_halved_row_keeps_the_step_and_halves_the_micro_batch() -> None:
    row = next(r for r in gt.big_runs(79.2) if r.name.startswith("1.5B selective ckpt, micro_bsz"))
    half = row.halved()
    assert half.micro_bsz == row.micro_bsz // 2 and half.name == row.name.replace(
        f"micro_bsz {row.micro_bsz}", f"micro_bsz {half.micro_bsz}"
    )
    mb = [o for o in half.overrides if o.startswith("stages.2.micro_bsz=")]
    assert mb == [f"stages.2.micro_bsz={row.micro_bsz // 2}"]
    assert "stages.2.tokens_per_step=32768" in half.overrides
    assert set(half.overrides) - {mb[0]} == set(row.overrides) - {f"stages.2.micro_bsz={row.micro_bsz}"}


def test_every_row_has_a_plain_file_name() -> None:
    """Logs, JSON and profiles are named by the tag: letters, digits, '_', '-', '.' only."""
    for r in [*gt.demo_runs(), *gt.big_runs(79.2), *gt.big_runs(139.8)]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", r.tag), r.tag
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", r.halved().tag) or r.micro_bsz == 0
