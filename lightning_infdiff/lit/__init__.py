"""Lightning wiring: the LightningModule."""

from .module import DiffusionModule, warmup_cosine

__all__ = ["DiffusionModule", "warmup_cosine"]
