"""Training-time callbacks (EMA, FID, throughput measurement)."""

from .ema import EMA, decay_from_half_life
from .fid import FIDCallback
from .throughput import Throughput, peak_rss_mib

__all__ = ["EMA", "FIDCallback", "Throughput", "decay_from_half_life", "peak_rss_mib"]
