"""Training-time callbacks (EMA, FID, ...)."""

from .ema import EMA, decay_from_half_life
from .fid import FIDCallback

__all__ = ["EMA", "FIDCallback", "decay_from_half_life"]
