"""Lightning wiring: the LightningModule and its learning-rate schedules."""

from .module import DiffusionModule, Sampling
from .schedulers import WarmupConstant, WarmupCosine

__all__ = ["DiffusionModule", "Sampling", "WarmupConstant", "WarmupCosine"]
