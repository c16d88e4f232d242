"""scripts/repro_paper.sh end to end at CPU size (`--quick true --device cpu`), the state suite
only, at two seeds: every run ends, its results are archived, and the summary table names it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_state_suite_runs_archives_and_summarises(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OUT": str(tmp_path / "out"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "repro_paper.sh"), "0.05", "1", "2", "--quick true --device cpu", "state",
         "0 3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| state-")]
    runs = ["state-nh1-s0", "state-nh1-s3", "state-nh2-s0", "state-nh2-s3"]
    assert [r.split("|")[1].strip() for r in rows] == [f"{run} S3" for run in runs], done.stdout
    assert not [line for line in done.stdout.splitlines() if line.startswith("| mqar-")]  # not asked for
    with tarfile.open(tmp_path / "out" / "paper_eval.tar.gz") as tar:
        names = tar.getnames()
        results = {run: json.load(tar.extractfile(f"./{run}/results.json")) for run in runs}
        seeds = {run: json.load(tar.extractfile(f"./{run}/args.json"))["seed"] for run in runs}
    assert not any("mqar" in n for n in names)
    for run, r in results.items():
        s3 = r["groups"]["S3"]
        assert r["setup"] == "paper" and s3["epochs"] >= 1 and s3["steps"] >= 1, run
        assert 0.0 < s3["final"]["token_accuracy"] <= 1.0
        # the table's token accuracy is the archived one
        row = next(line for line in rows if line.startswith(f"| {run} "))
        assert f"{s3['final']['token_accuracy']:.4f}" in row
    for run in runs:
        assert results[run]["model"]["n_householder"] == int(run[len("state-nh")])
        assert seeds[run] == int(run.rsplit("-s", 1)[1])
    assert not list(tmp_path.glob("eval"))  # nothing written into the current directory
