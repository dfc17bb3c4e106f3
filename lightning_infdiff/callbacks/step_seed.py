"""Seed torch's global generator per training batch and rank, so resumed runs draw the same noise.

The training noise (``t``/logSNR, the white noise, condition dropout, network dropout) is drawn
from torch's global generator. Lightning stores loops, optimisers, schedulers, callbacks and the
data loader's position in a checkpoint, but not the global generator, and the global stream is
also advanced by things that differ between an uninterrupted and a resumed run (every
``iter(DataLoader)`` draws a base seed from it; a validation run may or may not sit between the
saved step and the next one). Saving and restoring the generator state would therefore still
drift. Instead, before every training batch the generator is reseeded with

    seed_b = H(seed, rank, epoch, batch_idx)

(``H`` = :func:`lightning_infdiff.data.seeding.derive_seed`, a ``SeedSequence`` hash), so the
noise of batch ``b`` is a pure function of its position: a run resumed from any checkpoint
draws exactly the noise the uninterrupted run drew, and every DDP rank draws different noise
(Lightning's ``seed_everything`` gives all ranks the same seed).
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch

from ..data.seeding import derive_seed

__all__ = ["StepSeed"]

_STREAM_TRAIN_NOISE = 11  # distinct from the data streams in data/seeding.py


class StepSeed(L.Callback):
    """Reseed torch's global RNG (CPU and CUDA) before each training batch from (seed, rank, epoch, batch).

    Args:
        seed: base seed; default: the ``seed_everything`` seed (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and seed < 0:
            raise ValueError(f"StepSeed: seed must be non-negative, got {seed}")
        self.seed = seed

    def base_seed(self) -> int:
        """The configured seed, else ``seed_everything``'s, else 0."""
        if self.seed is not None:
            return int(self.seed)
        return abs(int(os.environ.get("PL_GLOBAL_SEED", "0")))

    def batch_seed(self, rank: int, epoch: int, batch_idx: int) -> int:
        """The seed of training batch ``batch_idx`` of ``epoch`` on ``rank``."""
        return derive_seed(self.base_seed(), _STREAM_TRAIN_NOISE, rank, epoch, batch_idx)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        """Reseed before the batch's forward pass."""
        torch.manual_seed(self.batch_seed(trainer.global_rank, trainer.current_epoch, batch_idx))
