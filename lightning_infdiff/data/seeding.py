"""Counter-based seeds: every random draw is a pure function of ``(seed, stream, ...)``.

Nothing in the data pipeline uses global random state. A draw for one example is seeded by
``(seed, stream, epoch, global position)``, so the sequence does not depend on the number of
workers or processes, and resuming at batch ``k`` of epoch ``e`` reproduces the exact batches.
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = [
    "derive_seed",
    "make_rng",
    "STREAM_ORDER",
    "STREAM_ITEM",
    "STREAM_VAL",
    "STREAM_RES",
    "STREAM_SPLIT",
    "STREAM_ASPECT",
]

STREAM_ORDER = 1  #: the per-epoch permutation of the training set
STREAM_ITEM = 2  #: per-example training draws (crop, flip, coordinates)
STREAM_VAL = 3  #: per-example validation draws (fixed across epochs)
STREAM_RES = 4  #: per-batch resolution of multi-resolution training
STREAM_SPLIT = 5  #: the train/validation split
STREAM_ASPECT = 6  #: per-batch aspect ratio of multi-aspect training


def derive_seed(*keys: int | str) -> int:
    """Hash integer (or string) keys into a 64-bit seed with numpy's ``SeedSequence``.

    Args:
        *keys: non-negative integers or strings (strings are CRC32-hashed).

    Returns:
        A seed in ``[0, 2**63)``; distinct key tuples give statistically independent streams.
    """
    ints = [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    if any(k < 0 for k in ints):
        raise ValueError(f"seed keys must be non-negative, got {keys!r}")
    state = np.random.SeedSequence(ints).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def make_rng(*keys: int | str) -> np.random.Generator:
    """A numpy ``Generator`` (PCG64) seeded by :func:`derive_seed` of ``keys``."""
    return np.random.default_rng(derive_seed(*keys))
