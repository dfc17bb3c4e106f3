"""Training-time callbacks (EMA, non-finite guard, per-batch seeding, atomic checkpoints, ...)."""

from .atomic_checkpoint import AtomicCheckpointIO, AtomicModelCheckpoint, atomic_write_bytes
from .compile import CompileDenoiser
from .ema import EMA, decay_from_half_life
from .nonfinite import NonFiniteGuard, NonFiniteTrainingError
from .step_seed import StepSeed

__all__ = [
    "EMA",
    "AtomicCheckpointIO",
    "AtomicModelCheckpoint",
    "CompileDenoiser",
    "NonFiniteGuard",
    "NonFiniteTrainingError",
    "StepSeed",
    "atomic_write_bytes",
    "decay_from_half_life",
]
