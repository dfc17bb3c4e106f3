"""Exponential moving average of the weights, with the decay given as a half-life in images."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor

__all__ = ["EMA", "decay_from_half_life"]


def decay_from_half_life(half_life_images: float, images_per_step: int) -> float:
    """Per-step decay ``beta`` such that a weight's influence halves after ``half_life_images``
    training images (Karras et al. 2022's ``ema_halflife_kimg``): ``beta = 0.5 ** (B / h)``."""
    if half_life_images <= 0 or images_per_step <= 0:
        raise ValueError(
            f"EMA half_life_images and the global batch size must be positive, got {half_life_images} and {images_per_step}"
        )
    return 0.5 ** (images_per_step / half_life_images)


class EMA(WeightAveraging):
    """EMA of the LightningModule's weights (Lightning's weight-averaging callback).

    Validation (and so the validation samples) and the final weights use the average; the
    checkpoint stores the average as ``state_dict`` and the raw weights separately, so training
    resumes exactly. Early on the decay is capped at ``(1 + n) / (10 + n)`` after ``n`` updates
    (a warm-up, so the average does not stay stuck near the random initialisation).

    Args:
        half_life_images: images after which an update's weight in the average halves.
        warmup: use the ``(1 + n) / (10 + n)`` cap.
        update_every_n_steps: update the average every this many optimiser steps.
    """

    def __init__(self, half_life_images: float = 5000.0, warmup: bool = True, update_every_n_steps: int = 1) -> None:
        if half_life_images <= 0:
            raise ValueError(f"EMA half_life_images must be positive, got {half_life_images}")
        if update_every_n_steps < 1:
            raise ValueError(f"EMA update_every_n_steps must be >= 1, got {update_every_n_steps}")
        self.half_life_images = float(half_life_images)
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps
        self.decay = 0.999
        super().__init__(use_buffers=True, multi_avg_fn=self._average_many)

    def _beta(self, num_averaged: Tensor | int) -> float:
        n = float(num_averaged)
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    def _average(self, avg: Tensor, current: Tensor, num_averaged: Tensor | int) -> Tensor:
        """One tensor's update ``avg + (current - avg)·(1 - beta)``."""
        return avg + (current - avg) * (1.0 - self._beta(num_averaged))

    def _average_many(self, avgs: list[Tensor], currents: list[Tensor], num_averaged: Tensor | int) -> None:
        """The update of :meth:`_average` in place for a group of tensors of one device and dtype
        (``AveragedModel`` groups them): floating tensors in one fused ``_foreach_lerp_``
        (``lerp(a, c, w) = a + w·(c - a)``), because a per-tensor update costs three small ops for
        each of the model's tensors every step."""
        if avgs and avgs[0].is_floating_point():
            torch._foreach_lerp_(avgs, currents, 1.0 - self._beta(num_averaged))
            return
        for avg, current in zip(avgs, currents, strict=True):
            avg.copy_(self._average(avg, current, num_averaged))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Derive the per-step decay from the global batch size, then create the average."""
        if stage == "fit":
            dm = getattr(trainer, "datamodule", None)
            batch = getattr(dm, "batch_size", None)
            if batch is None:
                raise ValueError("EMA needs the DataModule's batch_size to turn half_life_images into a decay")
            per_step = int(batch) * trainer.world_size * trainer.accumulate_grad_batches * self.update_every_n_steps
            self.decay = decay_from_half_life(self.half_life_images, per_step)
        super().setup(trainer, pl_module, stage)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update after every ``update_every_n_steps`` optimiser steps."""
        return step_idx is not None and step_idx % self.update_every_n_steps == 0

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "decay": self.decay}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.decay = float(state_dict.get("decay", self.decay))

    @torch.no_grad()
    def average_state_dict(self) -> dict[str, Tensor] | None:
        """The averaged module's state dict (``None`` before fit)."""
        if self._average_model is None:
            return None
        return self._average_model.module.state_dict()
