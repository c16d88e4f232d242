"""skein.train: the `skein` CLI, the run config and its plan, and the rooms loop/ (training),
parallel/ (how a run executes), checkpoints/, commands/ and eval/ (docs/architecture.md)."""
