"""A procedural, resolution-free dataset of soft Gaussian blobs (no extra package needed).

Each example is a function on ``[0, 1]^2``: a background colour with 1-4 anisotropic Gaussian
blobs alpha-composited on top. It is evaluated exactly at the pixel centres of whatever grid is
asked for, so the same example can be rendered at 16, 24 or 256 pixels. The label is the
number of blobs minus one.
"""

from __future__ import annotations

import numpy as np

from .seeding import make_rng
from .sources import ImageSource

__all__ = ["GaussianBlobs"]


class GaussianBlobs(ImageSource):
    """Soft coloured blobs rendered at any resolution; fast, deterministic, for tests and demos.

    Args:
        length: number of distinct examples.
        channels: 3 (colour) or 1 (grayscale).
        max_blobs: each example has ``1..max_blobs`` blobs; its label is ``count - 1``.
        seed: seed of the example set (example ``i`` is a pure function of ``(seed, i)``).
    """

    def __init__(
        self, length: int = 2048, channels: int = 3, max_blobs: int = 4, seed: int = 0
    ) -> None:
        if length < 1 or channels not in (1, 3) or max_blobs < 1:
            raise ValueError(
                f"GaussianBlobs: need length >= 1, channels in (1, 3), max_blobs >= 1; "
                f"got {length}, {channels}, {max_blobs}"
            )
        self.length, self.channels, self.max_blobs, self.seed = length, channels, max_blobs, seed
        self.num_classes = max_blobs

    def __len__(self) -> int:
        return self.length

    def load(
        self, index: int, resolution: int, rng: np.random.Generator, train: bool
    ) -> tuple[np.ndarray, int]:
        """Render example ``index`` at ``resolution`` (the ``rng`` is not used: examples are fixed)."""
        g = make_rng("blobs", self.seed, index)
        count = int(g.integers(1, self.max_blobs + 1))
        c = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution  # pixel centres
        yy, xx = np.meshgrid(c, c, indexing="ij")
        image = np.empty((self.channels, resolution, resolution), dtype=np.float32)
        image[:] = g.uniform(-1.0, -0.2, size=(self.channels, 1, 1))
        for _ in range(count):
            my, mx = g.uniform(0.15, 0.85, size=2)
            sy, sx = g.uniform(0.06, 0.2, size=2)
            theta = g.uniform(0.0, np.pi)
            ct, st = np.cos(theta), np.sin(theta)
            dy, dx = yy - my, xx - mx
            u, v = ct * dy + st * dx, -st * dy + ct * dx
            alpha = np.exp(-0.5 * ((u / sy) ** 2 + (v / sx) ** 2)).astype(np.float32)
            colour = g.uniform(-0.2, 1.0, size=(self.channels, 1, 1)).astype(np.float32)
            image = image * (1.0 - alpha) + colour * alpha
        return image, count - 1
