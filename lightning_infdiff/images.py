"""Image output without torchvision: uint8 conversion, grids and PNG files (PIL).

PNGs are encoded in memory and written atomically (:func:`~lightning_infdiff.files.atomic_write_bytes`):
a sampling run killed mid-way leaves complete images and no half-written file.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .files import atomic_write_bytes

__all__ = ["to_uint8", "make_grid", "save_grid", "save_images"]


def to_uint8(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` in ``[-1, 1]`` -> ``(B, H, W, C)`` uint8 (round to nearest)."""
    x = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu()


def make_grid(x: Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile a batch ``(B, C, H, W)`` in ``[-1, 1]`` into one ``(rows*H', cols*W', C)`` uint8 array."""
    imgs = to_uint8(x).numpy()
    b, h, w, c = imgs.shape
    cols = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(b):
        r, q = divmod(i, cols)
        y, xx = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y : y + h, xx : xx + w] = imgs[i]
    return canvas


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def _write_png(arr: np.ndarray, path: Path) -> None:
    buffer = io.BytesIO()
    _pil(arr).save(buffer, format="PNG")
    atomic_write_bytes(buffer.getvalue(), path, what="image")


def save_grid(x: Tensor, path: str | Path | None, nrow: int | None = None) -> np.ndarray:
    """Make a grid (see :func:`make_grid`) and, when ``path`` is given, save it as PNG."""
    grid = make_grid(x, nrow)
    if path is not None:
        path = Path(path)
        _write_png(grid, path)
    return grid


def save_images(x: Tensor, folder: str | Path, names: list[str]) -> list[Path]:
    """Save each image of ``(B, C, H, W)`` in ``[-1, 1]`` as ``folder/name.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(names) != x.shape[0]:
        raise ValueError(f"got {x.shape[0]} images but {len(names)} names")
    paths = []
    for img, name in zip(to_uint8(x).numpy(), names, strict=True):
        p = folder / f"{name}.png"
        _write_png(img, p)
        paths.append(p)
    return paths
