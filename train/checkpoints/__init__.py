"""The run directory: checkpoints and their metadata, the run lock, weights from any source, and
what a resume may change."""
