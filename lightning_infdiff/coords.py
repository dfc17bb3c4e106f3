"""Pixel-centre coordinates, the geometry of a grid, and the glue between points and grids.

The one coordinate convention of the toolkit (design notes, sections 4 and 6):

* The continuous image plane is measured in *domain units*: the unit square ``[0, 1]^2`` is a
  training image. A grid is a window onto that plane: ``H x W`` pixels with a pitch
  ``(p_y, p_x)`` and an origin ``(o_y, o_x)`` (:class:`Grid`). Pixel ``(i, j)`` (row ``i``,
  column ``j``) sits at its centre ``(o_y + (i + 1/2) p_y, o_x + (j + 1/2) p_x)``: coordinates
  are stored **(row, col) = (y, x)**.
* Two canvases: ``stretch`` covers the unit square whatever the shape (``p = (1/H, 1/W)``, so a
  non-square grid has non-square pixels); ``wide`` keeps pixels square
  (``p_y = p_x = 1 / min(H, W)``) and extends the plane along the longer axis, centred on the unit
  square (a 32x64 canvas shows ``[0, 1] x [-1/2, 3/2]``). On square grids they are the same. A
  plain ``(H, W)`` tuple means ``stretch``; data batches and the user-facing sampling commands
  use ``wide`` (a wider view, undistorted content).
* A flat index is row-major: ``k = i * W + j``.
* ``torch.nn.functional.grid_sample`` wants ``(x, y)`` in ``[-1, 1]`` with
  ``align_corners=False``; :func:`to_grid_sample` is the only place that converts.

Everything that depends on where pixels are (the mollifier's width in pixels and the noise
scale, the schedule shift, the sparse kernels' size, the inner grid of the sparse operator and
every denoiser's positional input) reads it from the grid's geometry. With these rules a
grid -> points -> grid round trip is exact (see ``tests/test_coords.py``), which guards
against the transposed-quadrant read-back of the ∞-Diff reference code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "CANVASES",
    "Grid",
    "as_grid",
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
    "jitter_coords",
]


#: canvases a non-square grid can have (see the module docstring)
CANVASES = ("stretch", "wide")


class Grid(tuple):
    """An ``(H, W)`` pixel grid and where it lies in the image plane (a tuple of two ints).

    It compares, hashes and unpacks like the plain ``(H, W)`` tuple, so it passes through any
    code that only needs the size; code that needs positions reads :attr:`pitch`,
    :attr:`origin`, :attr:`extent` and :attr:`density`.

    Args:
        h: rows.
        w: columns.
        canvas: ``stretch`` (the unit square, whatever the shape) or ``wide`` (square pixels,
            the plane extended along the longer axis, centred on the unit square).
    """

    canvas: str

    def __new__(cls, h: int, w: int, canvas: str = "stretch") -> Grid:
        if canvas not in CANVASES:
            raise ValueError(f"canvas must be one of {CANVASES}, got {canvas!r}")
        self = super().__new__(cls, (int(h), int(w)))
        if self[0] < 2 or self[1] < 2:
            raise ValueError(f"grid must be at least 2x2, got {self[0]}x{self[1]}")
        self.canvas = canvas
        return self

    def __getnewargs__(self) -> tuple[int, int, str]:
        return self[0], self[1], self.canvas

    def __repr__(self) -> str:
        return f"Grid({self[0]}, {self[1]}, canvas={self.canvas!r})"

    @property
    def pitch(self) -> tuple[float, float]:
        """Pixel size ``(p_y, p_x)`` in domain units."""
        h, w = self
        if self.canvas == "wide":
            p = 1.0 / min(h, w)
            return p, p
        return 1.0 / h, 1.0 / w

    @property
    def extent(self) -> tuple[float, float]:
        """Size of the window in domain units: ``(H p_y, W p_x)``."""
        return self[0] * self.pitch[0], self[1] * self.pitch[1]

    @property
    def origin(self) -> tuple[float, float]:
        """Domain coordinates of the window's top-left corner (centred on the unit square)."""
        ey, ex = self.extent
        return (1.0 - ey) / 2.0, (1.0 - ex) / 2.0

    @property
    def density(self) -> tuple[int, int]:
        """Pixels per domain unit along each axis, ``(1/p_y, 1/p_x)`` (whole numbers here)."""
        return round(1.0 / self.pitch[0]), round(1.0 / self.pitch[1])

    @property
    def unit(self) -> bool:
        """Whether the window is the unit square (``stretch``, or any square grid)."""
        return self.canvas == "stretch" or self[0] == self[1]

    def resized(self, h: int, w: int) -> Grid:
        """A grid of another size on the same canvas."""
        return Grid(h, w, self.canvas)


def as_grid(grid: tuple[int, int], canvas: str | None = None) -> Grid:
    """``grid`` as a :class:`Grid`: a plain tuple gets ``canvas`` (default ``stretch``); a
    :class:`Grid` keeps its own unless ``canvas`` is given."""
    if isinstance(grid, Grid) and canvas is None:
        return grid
    h, w = check_grid(grid)
    return Grid(h, w, canvas or getattr(grid, "canvas", "stretch"))


def check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    """Validate a grid size ``(H, W)`` and return it (a :class:`Grid` is returned as it is).

    Raises:
        ValueError: if the grid is not two integers of at least 2.
    """
    if isinstance(grid, Grid):
        return grid
    try:
        h, w = (int(g) for g in grid)
    except (TypeError, ValueError) as err:
        raise ValueError(f"grid must be two integers (H, W), got {grid!r}") from err
    if h < 2 or w < 2:
        raise ValueError(f"grid must be at least 2x2, got {h}x{w}")
    return h, w


def _axis(n: int, pitch: float, origin: float, device: torch.device | None, dtype: torch.dtype) -> Tensor:
    if origin == 0.0 and pitch == 1.0 / n:  # the unit interval: the exact (i + 1/2) / n of before
        return (torch.arange(n, device=device, dtype=dtype) + 0.5) / n
    return origin + (torch.arange(n, device=device, dtype=torch.float64) + 0.5).mul(pitch).to(dtype)


def pixel_centres(
    grid: tuple[int, int], device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """All pixel-centre coordinates of a grid, row-major, shape ``(H*W, 2)`` as ``(y, x)``."""
    g = as_grid(grid)
    (h, w), (py, px), (oy, ox) = g, g.pitch, g.origin
    ys, xs = _axis(h, py, oy, device, dtype), _axis(w, px, ox, device, dtype)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], dim=-1)


def index_to_coords(indices: Tensor, grid: tuple[int, int], dtype: torch.dtype = torch.float32) -> Tensor:
    """Flat row-major indices ``(..., N)`` -> pixel-centre coordinates ``(..., N, 2)``."""
    g = as_grid(grid)
    h, w = g
    rows = torch.div(indices, w, rounding_mode="floor")
    cols = indices - rows * w
    if g.unit:
        return torch.stack([(rows.to(dtype) + 0.5) / h, (cols.to(dtype) + 0.5) / w], dim=-1)
    (py, px), (oy, ox) = g.pitch, g.origin
    return torch.stack([oy + (rows.to(dtype) + 0.5) * py, ox + (cols.to(dtype) + 0.5) * px], dim=-1)


def coords_to_index(coords: Tensor, grid: tuple[int, int]) -> Tensor:
    """Coordinates ``(..., N, 2)`` (domain units) -> flat index of the pixel of ``grid`` containing them."""
    g = as_grid(grid)
    h, w = g
    if g.unit:
        rows = (coords[..., 0] * h).floor().long().clamp_(0, h - 1)
        cols = (coords[..., 1] * w).floor().long().clamp_(0, w - 1)
        return rows * w + cols
    (py, px), (oy, ox) = g.pitch, g.origin
    rows = ((coords[..., 0] - oy) / py).floor().long().clamp_(0, h - 1)
    cols = ((coords[..., 1] - ox) / px).floor().long().clamp_(0, w - 1)
    return rows * w + cols


def jitter_coords(coords: Tensor, offsets: Tensor, grid: tuple[int, int]) -> Tensor:
    """``coords + offsets * pitch``: sub-pixel offsets ``(..., N, 2)`` in pixels of ``grid`` moved into domain units."""
    pitch = torch.tensor(as_grid(grid).pitch, device=coords.device, dtype=coords.dtype)
    return coords + offsets.to(coords) * pitch


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


def to_grid_sample(coords: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """Convert ``(y, x)`` coordinates to ``grid_sample``'s ``(x, y)`` in ``[-1, 1]`` over the
    window of ``grid`` (default: the unit square).

    With ``align_corners=False``, ``-1`` and ``1`` are the outer edges of the border pixels,
    so pixel centres ``(i + 1/2) / N`` map exactly onto the grid's sample positions.
    """
    if grid is not None and not as_grid(grid).unit:
        g = as_grid(grid)
        lo = torch.tensor(g.origin, dtype=coords.dtype, device=coords.device)
        size = torch.tensor(g.extent, dtype=coords.dtype, device=coords.device)
        coords = (coords - lo) / size
    return (coords.flip(-1) * 2.0 - 1.0).contiguous()


def interpolate_at(dense: Tensor, coords: Tensor, mode: str = "bilinear", grid: tuple[int, int] | None = None) -> Tensor:
    """Read a dense field at continuous coordinates (bilinear by default).

    Args:
        dense: ``(B, C, H, W)`` field.
        coords: ``(B, N, 2)`` coordinates ``(y, x)`` in domain units.
        mode: ``grid_sample`` mode (``"bilinear"``, ``"nearest"`` or ``"bicubic"``).
        grid: the window ``dense`` covers (its canvas; default: the unit square).

    Returns:
        ``(B, N, C)`` interpolated values; borders use edge replication.
    """
    g = to_grid_sample(coords, grid).to(dense.dtype).unsqueeze(2)  # (B, N, 1, 2)
    out = F.grid_sample(dense, g, mode=mode, padding_mode="border", align_corners=False)
    return out.squeeze(-1).transpose(1, 2)
