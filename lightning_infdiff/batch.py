"""The batch type shared by data, processes and denoisers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .coords import Grid, full_coords, gather, index_to_coords, jitter_coords

__all__ = ["FieldBatch"]


@dataclass
class FieldBatch:
    """A batch of images seen as fields on a pixel grid, plus the sampled coordinates.

    Not frozen on purpose: Lightning moves batches to the device by rebuilding dataclasses.

    Attributes:
        image: dense images ``(B, C, H, W)`` in ``[-1, 1]``. Mollified diffusion needs the dense
            image (it blurs on the grid, then gathers at the points).
        indices: flat row-major indices of the sampled pixels ``(B, N)``, or ``None`` for the
            full grid.
        label: integer class labels ``(B,)`` when the source has them, else ``None``.
        offsets: sub-pixel coordinate jitter ``(B, N, 2)`` in pixels (training with
            ``jitter=True``), else ``None``: :attr:`coords` moves by ``offsets * pitch``.
    """

    image: Tensor
    indices: Tensor | None = None
    label: Tensor | None = None
    offsets: Tensor | None = None

    def __post_init__(self) -> None:
        if self.image.dim() != 4:
            raise ValueError(f"FieldBatch.image must be (B, C, H, W), got shape {tuple(self.image.shape)}")
        if self.indices is not None:
            if self.indices.dim() != 2 or self.indices.shape[0] != self.image.shape[0]:
                raise ValueError(
                    f"FieldBatch.indices must be (B, N) with B={self.image.shape[0]}, "
                    f"got shape {tuple(self.indices.shape)}"
                )
            if self.indices.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"FieldBatch.indices must be integer, got {self.indices.dtype}")
        if self.offsets is not None:
            n = self.image.shape[-2] * self.image.shape[-1] if self.indices is None else self.indices.shape[1]
            if tuple(self.offsets.shape) != (self.image.shape[0], n, 2):
                raise ValueError(f"FieldBatch.offsets must be (B, N, 2)=({self.image.shape[0]}, {n}, 2), "
                                 f"got {tuple(self.offsets.shape)}")

    @property
    def grid(self) -> Grid:
        """The images' grid ``(H, W)``: square pixels (a ``wide`` :class:`~lightning_infdiff.coords.Grid`;
        a square image is the unit square, a non-square one extends it along its longer side)."""
        return Grid(int(self.image.shape[-2]), int(self.image.shape[-1]), "wide")

    @property
    def num_points(self) -> int:
        """Points per example ``N`` (``H*W`` for the full grid)."""
        h, w = self.grid
        return h * w if self.indices is None else int(self.indices.shape[1])

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def coords(self) -> Tensor:
        """Coordinates ``(B, N, 2)`` as ``(y, x)`` in domain units: pixel centres of :attr:`grid`,
        moved by the jitter ``offsets`` when there is one."""
        if self.indices is None:
            coords = full_coords(len(self), self.grid, self.image.device)
        else:
            coords = index_to_coords(self.indices, self.grid)
        return coords if self.offsets is None else jitter_coords(coords, self.offsets, self.grid)

    def gather(self, dense: Tensor) -> Tensor:
        """Values of any dense ``(B, C, H, W)`` tensor at this batch's points: ``(B, N, C)``."""
        return gather(dense, self.indices)

    @property
    def values(self) -> Tensor:
        """Image values at the sampled points ``(B, N, C)``."""
        return self.gather(self.image)
