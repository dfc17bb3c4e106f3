"""Training-time callbacks (EMA, throughput measurement, ...)."""

from .ema import EMA, decay_from_half_life
from .throughput import Throughput, peak_rss_mib

__all__ = ["EMA", "Throughput", "decay_from_half_life", "peak_rss_mib"]
