"""The training loop: `skein train` (run.py), the LightningModule, data module, losses, optimizer,
learning-rate schedule, segment-wise training, callbacks, periodic evaluation and requeueing."""
