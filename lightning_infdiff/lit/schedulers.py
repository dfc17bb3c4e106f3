"""Learning-rate schedules, injected into :class:`~lightning_infdiff.lit.DiffusionModule` as
``lr_scheduler`` (LightningCLI's ``LRSchedulerCallable``: a class whose first argument is the
optimiser, configured by ``class_path`` and ``init_args``). Both step once per optimiser step.

A schedule that decays over the run (``total_steps: null``) is told the run's length by the
module (``trainer.estimated_stepping_batches``) before the first step.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupConstant", "WarmupCosine"]


class WarmupCosine(LRScheduler):
    """Linear warm-up, then cosine decay to ``min_ratio`` of the peak at the end of the run.

    ``f(s) = (s + 1) / S_w`` for ``s < S_w``, else
    ``r + (1 - r) (1 + cos(pi p)) / 2`` with ``p = (s - S_w) / (S - S_w)`` clipped to 1
    (Loshchilov & Hutter 2017, SGDR eq. 5 without restarts; linear warm-up of Goyal et al. 2017).

    Args:
        optimizer: the optimiser whose learning rates are scaled.
        warmup_steps: linear warm-up steps ``S_w``.
        min_ratio: final learning rate ``r`` as a fraction of the peak.
        total_steps: run length ``S``; ``None``: set by the module from the trainer.
    """

    def __init__(
        self, optimizer: Optimizer, warmup_steps: int = 200, min_ratio: float = 0.1, total_steps: int | None = None,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
        self.warmup_steps, self.min_ratio, self.total_steps = warmup_steps, min_ratio, total_steps
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The learning-rate factor ``f(step)``."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.total_steps is None or self.total_steps <= self.warmup_steps:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]


class WarmupConstant(WarmupCosine):
    """Linear warm-up over ``warmup_steps``, then the peak learning rate: for runs bounded by wall
    time (``trainer.max_time``), whose length is not known in steps.

    Args:
        optimizer: the optimiser whose learning rates are scaled.
        warmup_steps: linear warm-up steps.
    """

    def __init__(self, optimizer: Optimizer, warmup_steps: int = 200, last_epoch: int = -1) -> None:
        super().__init__(optimizer, warmup_steps, 1.0, 0, last_epoch)


def run_length_needed(scheduler: object) -> bool:
    """Whether ``scheduler`` decays over the run and waits to be told its length."""
    return isinstance(scheduler, WarmupCosine) and scheduler.total_steps is None
