"""The batch type shared by data, processes and denoisers."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .coords import full_coords, gather, index_to_coords

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
    """

    image: Tensor
    indices: Tensor | None = None
    label: Tensor | None = None

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

    @property
    def grid(self) -> tuple[int, int]:
        """Grid size ``(H, W)``."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    @property
    def num_points(self) -> int:
        """Points per example ``N`` (``H*W`` for the full grid)."""
        h, w = self.grid
        return h * w if self.indices is None else int(self.indices.shape[1])

    def __len__(self) -> int:
        return int(self.image.shape[0])

    @property
    def coords(self) -> Tensor:
        """Pixel-centre coordinates ``(B, N, 2)`` as ``(y, x)`` in ``[0, 1]^2``."""
        if self.indices is None:
            return full_coords(len(self), self.grid, self.image.device)
        return index_to_coords(self.indices, self.grid)

    def gather(self, dense: Tensor) -> Tensor:
        """Values of any dense ``(B, C, H, W)`` tensor at this batch's points: ``(B, N, C)``."""
        return gather(dense, self.indices)

    @property
    def values(self) -> Tensor:
        """Image values at the sampled points ``(B, N, C)``."""
        return self.gather(self.image)
