"""Training-time callbacks (EMA, non-finite guard, per-batch seeding, atomic checkpoints, ...)."""

from .atomic_checkpoint import AtomicCheckpointIO, AtomicModelCheckpoint, atomic_write_bytes
from .ema import EMA, decay_from_half_life
from .nonfinite import NonFiniteGuard, NonFiniteTrainingError
from .step_seed import StepSeed

__all__ = [
    "EMA",
    "AtomicCheckpointIO",
    "AtomicModelCheckpoint",
    "NonFiniteGuard",
    "NonFiniteTrainingError",
    "StepSeed",
    "atomic_write_bytes",
    "decay_from_half_life",
]
