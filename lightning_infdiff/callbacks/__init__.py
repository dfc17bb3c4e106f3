"""Training-time callbacks: EMA, post-hoc EMA snapshots, FID, throughput, non-finite guard, per-batch
seeding, atomic checkpoints, the HParams view, sample sheets and the loss-by-noise-level file."""

from .atomic_checkpoint import AtomicCheckpointIO, AtomicModelCheckpoint, atomic_write_bytes
from .compile import CompileDenoiser
from .ema import EMA, decay_from_half_life
from .fid import FIDCallback
from .hparams import HParamsView
from .noise_curve import NoiseLevelCurve
from .nonfinite import NonFiniteGuard, NonFiniteTrainingError
from .posthoc_ema import PostHocEMA
from .samples import SampleGrids
from .step_seed import StepSeed
from .throughput import Throughput, peak_rss_mib

__all__ = [
    "EMA",
    "AtomicCheckpointIO",
    "AtomicModelCheckpoint",
    "CompileDenoiser",
    "FIDCallback",
    "HParamsView",
    "NoiseLevelCurve",
    "NonFiniteGuard",
    "NonFiniteTrainingError",
    "PostHocEMA",
    "SampleGrids",
    "StepSeed",
    "Throughput",
    "atomic_write_bytes",
    "decay_from_half_life",
    "peak_rss_mib",
]
