"""skein.train: the Lightning module, strategies, schedules, checkpoints and the `skein` CLI."""
