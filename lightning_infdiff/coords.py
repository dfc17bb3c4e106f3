"""Pixel-centre coordinates and the glue between points and grids.

The one coordinate convention of the toolkit (design notes, section 4):

* A grid of ``H x W`` pixels covers the unit square ``[0, 1]^2``.
* Pixel ``(i, j)`` (row ``i``, column ``j``) sits at its centre
  ``c = ((i + 1/2) / H, (j + 1/2) / W)``: coordinates are stored **(row, col) = (y, x)**.
* A flat index is row-major: ``k = i * W + j``.
* ``torch.nn.functional.grid_sample`` wants ``(x, y)`` in ``[-1, 1]`` with
  ``align_corners=False``; :func:`to_grid_sample` is the only place that converts.

With these rules a grid -> points -> grid round trip is exact (see ``tests/test_coords.py``),
which guards against the transposed-quadrant read-back of the ∞-Diff reference code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "check_grid",
    "pixel_centres",
    "index_to_coords",
    "coords_to_index",
    "full_indices",
    "full_coords",
    "gather",
    "scatter",
    "to_grid_sample",
    "interpolate_at",
]


def check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """Validate a grid size ``(H, W)`` and return it as a tuple of ints.

    Raises:
        ValueError: if the grid is not two integers of at least 2.
    """
    try:
        h, w = (int(g) for g in grid)
    except (TypeError, ValueError) as err:
        raise ValueError(f"grid must be two integers (H, W), got {grid!r}") from err
    if h < 2 or w < 2:
        raise ValueError(f"grid must be at least 2x2, got {h}x{w}")
    return h, w


def pixel_centres(
    grid: tuple[int, int], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """All pixel-centre coordinates of a grid, row-major, shape ``(H*W, 2)`` as ``(y, x)``."""
    h, w = check_grid(grid)
    ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=-1)


def index_to_coords(indices: Tensor, grid: tuple[int, int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Flat row-major indices ``(..., N)`` -> pixel-centre coordinates ``(..., N, 2)``."""
    h, w = check_grid(grid)
    rows = torch.div(indices, w, rounding_mode="floor")
    cols = indices - rows * w
    return torch.stack([(rows.to(dtype) + 0.5) / h, (cols.to(dtype) + 0.5) / w], dim=-1)


def coords_to_index(coords: Tensor, grid: tuple[int, int]) -> Tensor:
    """Coordinates ``(..., N, 2)`` in ``[0, 1]^2`` -> flat index of the pixel containing them."""
    h, w = check_grid(grid)
    rows = (coords[..., 0] * h).floor().long().clamp_(0, h - 1)
    cols = (coords[..., 1] * w).floor().long().clamp_(0, w - 1)
    return rows * w + cols


def full_indices(batch: int, grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Indices of every pixel for each example: shape ``(B, H*W)``."""
    h, w = check_grid(grid)
    return torch.arange(h * w, device=device).expand(batch, h * w)


def full_coords(batch: int, grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Pixel-centre coordinates of every pixel for each example: shape ``(B, H*W, 2)``."""
    return index_to_coords(full_indices(batch, grid, device), grid)


def gather(dense: Tensor, indices: Tensor | None) -> Tensor:
    """Values of a dense field at flat indices.

    Args:
        dense: ``(B, C, H, W)`` field.
        indices: ``(B, N)`` flat row-major indices, or ``None`` for every pixel.

    Returns:
        ``(B, N, C)`` values (``N = H*W`` when ``indices`` is ``None``).
    """
    b, c, h, w = dense.shape
    flat = dense.reshape(b, c, h * w)
    if indices is None:
        return flat.transpose(1, 2)
    idx = indices.unsqueeze(1).expand(b, c, indices.shape[-1])
    return torch.gather(flat, 2, idx).transpose(1, 2)


def scatter(values: Tensor, indices: Tensor | None, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Place point values on a zero canvas.

    Args:
        values: ``(B, N, C)`` point values.
        indices: ``(B, N)`` unique flat indices per example, or ``None`` when the points are
            the full grid in row-major order.
        grid: ``(H, W)``.

    Returns:
        ``canvas (B, C, H, W)`` with zeros where no point landed and ``mask (B, 1, H, W)``
        that is 1 at the sampled pixels.
    """
    h, w = check_grid(grid)
    b, n, c = values.shape
    if indices is None:
        if n != h * w:
            raise ValueError(f"without indices the points must cover the {h}x{w} grid, got N={n}")
        canvas = values.transpose(1, 2).reshape(b, c, h, w)
        return canvas, values.new_ones(b, 1, h, w)
    canvas = values.new_zeros(b, c, h * w)
    canvas.scatter_(2, indices.unsqueeze(1).expand(b, c, n), values.transpose(1, 2))
    mask = values.new_zeros(b, 1, h * w)
    mask.scatter_(2, indices.unsqueeze(1), values.new_ones(b, 1, n))
    return canvas.reshape(b, c, h, w), mask.reshape(b, 1, h, w)


def to_grid_sample(coords: Tensor) -> Tensor:
    """Convert ``(y, x)`` coordinates in ``[0, 1]^2`` to ``grid_sample``'s ``(x, y)`` in ``[-1, 1]``.

    With ``align_corners=False``, ``-1`` and ``1`` are the outer edges of the border pixels,
    so pixel centres ``(i + 1/2) / N`` map exactly onto the grid's sample positions.
    """
    return (coords.flip(-1) * 2.0 - 1.0).contiguous()


def interpolate_at(dense: Tensor, coords: Tensor, mode: str = "bilinear") -> Tensor:
    """Read a dense field at continuous coordinates (bilinear by default).

    Args:
        dense: ``(B, C, H, W)`` field.
        coords: ``(B, N, 2)`` coordinates ``(y, x)`` in ``[0, 1]^2``.
        mode: ``grid_sample`` mode (``"bilinear"``, ``"nearest"`` or ``"bicubic"``).

    Returns:
        ``(B, N, C)`` interpolated values; borders use edge replication.
    """
    g = to_grid_sample(coords).to(dense.dtype).unsqueeze(2)  # (B, N, 1, 2)
    out = F.grid_sample(dense, g, mode=mode, padding_mode="border", align_corners=False)
    return out.squeeze(-1).transpose(1, 2)
