"""Training-time callbacks (EMA, ...)."""

from .ema import EMA, decay_from_half_life

__all__ = ["EMA", "decay_from_half_life"]
