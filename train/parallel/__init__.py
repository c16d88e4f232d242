"""How a run executes on the hardware: the strategy, precision and world size, and the wrappers
(gradient checkpointing, torch.compile) applied to a model's blocks from outside the model."""
