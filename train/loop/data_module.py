"""The LightningDataModule of a stage: the weighted binidx mixture cut into ctx_len samples, read
in the order the step sampler gives, starting at the resumed step."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from skein.data.dataset import PretrainDataset
from skein.data.sampler import StepSampler
from skein.train.config import ConfigError, RunConfig
from skein.train.preflight import vocab_problems


def check_vocab(cfg: RunConfig) -> None:
    """Refuse shards whose recorded tokenizer does not fit the model (or the configured tokenizer),
    and shards holding a token id that is negative or >= model.vocab_size."""
    problems = vocab_problems(cfg)
    if problems:
        raise ConfigError("; ".join(problems))


class StageDataModule(L.LightningDataModule):
    def __init__(
        self,
        cfg: RunConfig,
        ctx_len: int,
        micro_bsz: int,
        global_batch: int,
        start_step: int,
    ) -> None:
        super().__init__()
        if not cfg.data.train:
            raise ValueError("data.train: no binidx prefixes given")
        self.cfg, self.ctx_len, self.micro_bsz = cfg, ctx_len, micro_bsz
        self.global_batch, self.start_step = global_batch, start_step

    def setup(self, stage: str | None = None) -> None:
        self.vocab_size = self.cfg.model.vocab_size
        data = self.cfg.data
        self.dataset = PretrainDataset(
            data.train,
            data.weights,
            self.ctx_len,
            seed=self.cfg.run.seed,
            sample_offset=data.sample_offset,
            pass_order=data.pass_order,
        )
        rank, world = self.trainer.global_rank, self.trainer.world_size
        self.sampler = StepSampler(self.global_batch, rank, world, start_step=self.start_step)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.dataset,
            batch_size=self.micro_bsz,
            sampler=self.sampler,
            num_workers=self.cfg.data.num_workers,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
            collate_fn=self._collate,
        )

    def _collate(self, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack samples; a token id outside the model's vocabulary is an error, not an index crash."""
        x = torch.stack([s[0] for s in samples])
        y = torch.stack([s[1] for s in samples])
        top = int(y.max())
        if top >= self.vocab_size:
            raise ValueError(
                f"token id {top} in {self.cfg.data.train} is >= model.vocab_size={self.vocab_size}: "
                "the shards were made with another tokenizer"
            )
        return x, y
