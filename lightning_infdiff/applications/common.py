"""Shared pieces of the applications: input checks, image files, masks, area resampling.

Conventions used by :mod:`.inpaint` and :mod:`.superres`:

* images are ``(B, C, H, W)`` (or ``(C, H, W)``) float tensors in ``[-1, 1]``;
* a *known-pixel mask* ``m`` is ``(B, 1, H, W)`` with 1 where the input is kept and 0 where
  the model fills in (the ``m`` of ∞-Diff section 5's ``|| m ⊙ (x0_hat - T x_bar) ||^2``);
* mask *files* and named shapes describe the region **to fill** (white = fill, the convention
  of common inpainting tools); :func:`load_mask` and :func:`named_mask` return known-pixel masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..data.convert import to_float, to_rgb_or_gray

__all__ = [
    "MASK_SHAPES",
    "as_batch",
    "check_image",
    "check_mask",
    "load_image",
    "load_mask",
    "named_mask",
    "area_downsample",
    "nearest_upsample",
    "integer_factors",
    "model_condition",
    "match_batch",
    "module_device",
    "project_block_means",
]

MASK_SHAPES = ("left-half", "right-half", "top-half", "bottom-half", "center-square", "random-strokes")


def as_batch(image: Tensor, name: str = "image") -> Tensor:
    """``(C, H, W)`` -> ``(1, C, H, W)``; ``(B, C, H, W)`` unchanged; anything else is an error."""
    if not isinstance(image, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4:
        raise ValueError(f"{name} must be (C, H, W) or (B, C, H, W), got shape {tuple(image.shape)}")
    return image


def check_image(image: Tensor, channels: int, name: str = "image") -> Tensor:
    """Validate an image batch against the model: channel count, size >= 2x2, finite, in [-1, 1].

    Returns:
        The image as float32 ``(B, C, H, W)``.

    Raises:
        ValueError: naming what was expected.
    """
    image = as_batch(image, name)
    if image.shape[1] != channels:
        raise ValueError(
            f"{name} has {image.shape[1]} channel(s) but the model expects {channels}: "
            f"convert it first (e.g. load_image(path, channels={channels}))"
        )
    if min(image.shape[-2:]) < 2:
        raise ValueError(f"{name} must be at least 2x2, got {tuple(image.shape[-2:])}")
    image = image.float()
    if not bool(torch.isfinite(image).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    if image.min() < -1.0 - 1e-4 or image.max() > 1.0 + 1e-4:
        raise ValueError(
            f"{name} values must lie in [-1, 1], got [{float(image.min()):.3g}, {float(image.max()):.3g}]"
        )
    return image.clamp(-1.0, 1.0)


def check_mask(mask: Tensor, image: Tensor) -> Tensor:
    """Validate a known-pixel mask against a ``(B, C, H, W)`` image; returns float ``(B, 1, H, W)``.

    Accepts ``(H, W)``, ``(1, H, W)``, ``(B, 1, H, W)`` or ``(B, C, H, W)``-shaped masks with values
    in ``{0, 1}`` (1 = known pixel).
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    b, c, h, w = image.shape
    if tuple(mask.shape[-2:]) != (h, w):
        raise ValueError(f"mask is {tuple(mask.shape[-2:])} but the image is {(h, w)}: they must be the same size")
    m = mask.float()
    while m.dim() < 4:
        m = m[None]
    if m.dim() != 4 or m.shape[0] not in (1, b) or m.shape[1] not in (1, c):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not broadcast to the image batch {tuple(image.shape)}")
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask values must be 0 (fill) or 1 (known)")
    m = m.amin(dim=1, keepdim=True).expand(b, 1, h, w)
    return m.contiguous()


def _open(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{what} file {path} is not a readable image (PNG, JPEG, ...): {err}") from err
    return img


def load_image(path: str | Path, channels: int) -> Tensor:
    """Read an image file as ``(1, channels, H, W)`` in ``[-1, 1]`` (grey/RGB converted to ``channels``).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not an image or ``channels`` is not 1 or 3.
    """
    img = to_rgb_or_gray(_open(path, "image"), channels)
    return torch.from_numpy(to_float(img))[None]


def load_mask(path: str | Path, size: tuple[int, int]) -> Tensor:
    """Read a mask file (bright pixels, grey level >= 128, = region to fill) as a known-pixel mask ``(1, 1, H, W)``.

    Raises:
        ValueError: if the file is not an image or its size differs from ``size`` (H, W).
    """
    img = _open(path, "mask")
    arr = np.asarray(to_rgb_or_gray(img, 1), dtype=np.float32)
    if arr.shape != tuple(size):
        raise ValueError(f"mask {path} is {arr.shape[0]}x{arr.shape[1]} but the image is {size[0]}x{size[1]}")
    return torch.from_numpy((arr < 128).astype(np.float32))[None, None]


def named_mask(name: str, size: tuple[int, int], seed: int = 0) -> Tensor:
    """A known-pixel mask ``(1, 1, H, W)`` whose *missing* region is the named shape.

    Shapes: ``left-half``, ``right-half``, ``top-half``, ``bottom-half`` (columns/rows ``< W/2`` etc.),
    ``center-square`` (the centred square of side ``min(H, W)/2``), ``random-strokes`` (a few thick
    random line segments, seeded by ``seed``).
    """
    h, w = int(size[0]), int(size[1])
    if min(h, w) < 2:
        raise ValueError(f"mask size must be at least 2x2, got {size}")
    fill = torch.zeros(h, w, dtype=torch.bool)
    if name == "left-half":
        fill[:, : w // 2] = True
    elif name == "right-half":
        fill[:, w // 2 :] = True
    elif name == "top-half":
        fill[: h // 2] = True
    elif name == "bottom-half":
        fill[h // 2 :] = True
    elif name == "center-square":
        side = max(1, min(h, w) // 2)
        top, left = (h - side) // 2, (w - side) // 2
        fill[top : top + side, left : left + side] = True
    elif name == "random-strokes":
        g = torch.Generator().manual_seed(int(seed))
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        radius = max(1.0, 0.06 * min(h, w))
        for _ in range(4):
            p0 = torch.rand(2, generator=g) * torch.tensor([h, w])
            p1 = torch.rand(2, generator=g) * torch.tensor([h, w])
            d = p1 - p0
            u = ((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / d.pow(2).sum().clamp(min=1e-6)
            u = u.clamp(0, 1)
            dist = torch.hypot(yy - p0[0] - u * d[0], xx - p0[1] - u * d[1])
            fill |= dist <= radius
    else:
        raise ValueError(f"unknown mask shape {name!r}; expected a mask file or one of {MASK_SHAPES}")
    return (~fill).float()[None, None]


def area_downsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Area (box-average) downsampling ``D`` to ``size``; exact block means for integer factors."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size=tuple(int(s) for s in size), mode="area")


def nearest_upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour upsampling ``U`` to ``size``; ``D(U(y)) = y`` for integer factors."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size=tuple(int(s) for s in size), mode="nearest")


def integer_factors(low: Sequence[int], high: Sequence[int]) -> tuple[int, int] | None:
    """Per-axis integer factors ``high / low``, or ``None`` if either is not an integer."""
    fy, fx = high[0] / low[0], high[1] / low[1]
    if math.isclose(fy, round(fy)) and math.isclose(fx, round(fx)):
        return round(fy), round(fx)
    return None


def model_condition(denoiser: object, cond: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
    """The condition passed to the sampler: ``cond`` if given, else ``None`` (the null class for
    class-conditional denoisers, i.e. unconditional sampling)."""
    if cond is None:
        return None
    if not getattr(denoiser, "num_classes", 0):
        raise ValueError("labels were given but the denoiser is unconditional (num_classes=0)")
    cond = torch.as_tensor(cond, device=device).long().flatten()
    if cond.numel() == 1:
        cond = cond.expand(batch)
    if cond.numel() != batch:
        raise ValueError(f"got {cond.numel()} labels for {batch} samples")
    return cond.contiguous()


def match_batch(image: Tensor, other: Tensor | None, n: int) -> tuple[Tensor, Tensor | None]:
    """Repeat a single image (and its mask) for ``n`` seeds; a batch must have ``n`` images."""
    b = image.shape[0]
    if b not in (1, n):
        raise ValueError(f"got {b} images but {n} seeds: give one image or one seed per image")
    image = image.expand(n, *image.shape[1:]).contiguous()
    if other is not None:
        other = other.expand(n, *other.shape[1:]).contiguous()
    return image, other


def module_device(module: torch.nn.Module | None) -> torch.device:
    """Device of a module's first parameter (CPU for ``None`` or parameter-free modules)."""
    p = next(iter(module.parameters()), None) if module is not None else None
    return p.device if p is not None else torch.device("cpu")


def project_block_means(x: Tensor, y: Tensor, iters: int = 60) -> Tensor:
    """Euclidean projection of ``x (B, C, sH, sW)`` onto ``{D x = y} ∩ [-1, 1]^n`` for integer factors.

    ``D`` is the box average over ``s_y x s_x`` blocks. By the KKT conditions the projection
    shifts each block by one constant and clamps: ``clamp(x + c_b, -1, 1)`` with ``c_b`` the root
    of the increasing function ``c -> mean_b clamp(x + c) - y_b`` (found by bisection). Without the
    box this is ``x + U(y - D x)``. ``y`` must lie in ``[-1, 1]``.
    """
    b, c, hh, ww = x.shape
    h, w = y.shape[-2:]
    if hh % h or ww % w:
        raise ValueError(f"project_block_means needs integer factors, got {h}x{w} -> {hh}x{ww}")
    fy, fx = hh // h, ww // w
    blocks = x.float().reshape(b, c, h, fy, w, fx)
    target = y.float().reshape(b, c, h, 1, w, 1)
    lo = (-1.0 - blocks.amax(dim=(3, 5), keepdim=True)).expand_as(target).clone()
    hi = (1.0 - blocks.amin(dim=(3, 5), keepdim=True)).expand_as(target).clone()
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        above = (blocks + mid).clamp(-1.0, 1.0).mean(dim=(3, 5), keepdim=True) > target
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    shift = 0.5 * (lo + hi)
    return (blocks + shift).clamp(-1.0, 1.0).reshape(b, c, hh, ww)
