"""The image-source interface and the deterministic train/validation split.

A source is anything that can render example ``index`` at a square ``resolution``: a folder of
files, an in-memory array, a photograph cropped at random, or a procedural function. Sources
know nothing about batches, coordinates, ranks or workers (the DataModule handles those); they
receive a numpy ``Generator`` for their random choices so that every draw is reproducible.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from .seeding import STREAM_SPLIT, make_rng

__all__ = ["ImageSource", "split_indices"]


class ImageSource(ABC):
    """Base class of every image source.

    Subclasses set :attr:`channels` (1 or 3), :attr:`num_classes` (``None`` when unlabelled)
    and implement :meth:`__len__` and :meth:`load`.
    """

    channels: int = 3
    num_classes: int | None = None

    def prepare(self, resolutions: list[int]) -> None:
        """Check the source once before training (scan files, warn about small images).

        Called by the DataModule's ``setup`` with every resolution it will ask for. The default
        does nothing.
        """
        del resolutions

    @abstractmethod
    def __len__(self) -> int:
        """Number of examples (for endless sources: examples per epoch)."""

    @abstractmethod
    def load(
        self, index: int, resolution: int, rng: np.random.Generator, train: bool
    ) -> tuple[np.ndarray, int | None]:
        """Render example ``index`` at ``resolution x resolution``.

        Args:
            index: example index in ``[0, len(self))``.
            resolution: side of the square output in pixels.
            rng: generator for this example's random choices (crop position, ...).
            train: ``True`` for training draws (random crops allowed), ``False`` for validation
                (deterministic, e.g. centre crops).

        Returns:
            ``(image, label)``: ``float32`` array ``(C, R, R)`` in ``[-1, 1]`` and an ``int``
            label or ``None``.
        """

    def load_rect(
        self, index: int, size: tuple[int, int], rng: np.random.Generator, train: bool
    ) -> tuple[np.ndarray, int | None]:
        """Render example ``index`` on an ``H x W`` window with square pixels (non-square training).

        The shorter side spans what :meth:`load` renders at that side (the unit square of
        :mod:`lightning_infdiff.coords`), the longer one shows more. This default renders the
        square at ``max(H, W)`` and crops the window from it (its centre for validation, a
        random position in training), right for textures and photographs; sources with a
        better wider view override it (a folder crops the file itself, the bundled digits and
        silhouettes extend their background).
        """
        h, w = int(size[0]), int(size[1])
        if h == w:
            return self.load(index, h, rng, train)
        side = max(h, w)
        image, label = self.load(index, side, rng, train)
        top = int(rng.integers(0, side - h + 1)) if train else (side - h) // 2
        left = int(rng.integers(0, side - w + 1)) if train else (side - w) // 2
        return np.ascontiguousarray(image[:, top : top + h, left : left + w]), label


def split_indices(
    n: int, val_fraction: float, val_size: int | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/validation split of ``range(n)``.

    Args:
        n: number of examples.
        val_fraction: fraction of examples held out when ``val_size`` is ``None``.
        val_size: exact number of held-out examples (takes precedence).
        seed: split seed (independent of the training seed, so changing the training seed
            never moves an image between the two sets).

    Returns:
        ``(train, val)`` sorted index arrays.
    """
    if n < 2:
        raise ValueError(f"need at least 2 examples to split into train and validation, got {n}")
    if val_size is None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        val_size = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be in [0, {n}) for {n} examples, got {val_size}")
    perm = make_rng(seed, STREAM_SPLIT, n).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])
