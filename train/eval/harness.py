"""The lm-evaluation-harness suite: EleutherAI's lm_eval tasks (arc_easy, hellaswag, wikitext, or
local task YAMLs) on any model `skein export` reads, through the registered "skein" lm_eval model
(lm_eval_model.py). Needs the `eval` extra (`pip install skein[eval]`).

Writes results.json (lm_eval's results, configs and versions, without the per-sample logs) and
args.json, and prints lm_eval's table.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from skein.train.eval.output import ResultsDir, results_path
from skein.train.typed import ConfigError


def task_manager(names: list[str], include_path: str | None) -> Any:
    """lm_eval's TaskManager: the YAMLs under include_path alone when they hold every task named
    (indexing lm_eval's own thousands of tasks takes seconds), else those and lm_eval's own."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(local.match_tasks([n]) for n in names):
            return local
        return TaskManager(include_path=include_path)
    return TaskManager()


def harness(
    model: str,
    tasks: list[str] | None = None,
    include_path: str | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str = "auto",
    tokenizer: str | None = None,
    precision: str | None = None,
    max_length: int | None = None,
    share_context: bool = True,
    output: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """lm-evaluation-harness tasks on a skein model.

    Args:
        model: run directory, checkpoint, .pth, .safetensors or Hugging Face directory.
        tasks: lm_eval task names, comma-separated or as a list (arc_easy,hellaswag,...).
        include_path: a folder of extra task YAMLs (local tasks; `dataset_path: json` reads local
            files, which needs no network).
        limit: examples per task (below 1: a fraction of each task).
        num_fewshot: examples in each prompt (default: the task's own).
        batch_size: requests per forward pass.
        device: auto (CUDA when present), cpu, cuda, ...
        tokenizer: tokenizer spec (default: the one recorded with the run).
        precision: 32, bf16-mixed, 16-mixed or bf16-true (default: the run's trainer.precision,
            auto resolved as training resolves it).
        max_length: tokens per forward pass, and the transformer's window (default: the run's
            last-stage ctx_len).
        share_context: recurrent models read each distinct context once and start every
            continuation from its state.
        output: results directory (new or empty; default <run>/eval/harness, or
            runs/eval/harness for weights outside a run).
        seed: seed of lm_eval's few-shot sampling and of everything random in it.
    """
    names = [t.strip() for item in (tasks or []) for t in str(item).split(",") if t.strip()]
    if not names:
        raise ConfigError("--tasks: name at least one lm_eval task (e.g. arc_easy,hellaswag)")
    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError("lm_eval is not installed; pip install 'skein[eval]'")
    import lm_eval
    from lm_eval.utils import make_table

    from skein.train.eval.lm_eval_model import SkeinLM

    manager = task_manager(names, include_path)
    missing = [n for n in names if not manager.match_tasks([n])]
    if missing:
        where = f" or under --include_path {include_path}" if include_path else ""
        raise ConfigError(f"--tasks: unknown {missing}: not an lm_eval task{where}")
    out = ResultsDir(results_path("harness", output, model))
    lm = SkeinLM(model, batch_size=batch_size, device=device, tokenizer=tokenizer, precision=precision,
                 max_length=max_length, share_context=share_context)  # fmt: skip
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=names,
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    args = {"model": model, "tasks": names, "include_path": include_path, "limit": limit,
            "num_fewshot": num_fewshot, "batch_size": batch_size, "device": str(lm.device),
            "precision": lm.precision, "max_length": lm.max_length, "share_context": lm.share_context,
            "recurrent": lm.recurrent, "seed": seed}  # fmt: skip
    out.json("args.json", args)
    out.json("results.json", {k: v for k, v in res.items() if k != "samples"})
    print(make_table(res))
    print(f"results: {out.path}")
    return res
