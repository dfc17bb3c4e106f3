"""A reference-free measure of sub-pixel artifacts, judged at the sample's own resolution.

For an image ``x`` on an ``H x W`` grid, the share of its variance above the scale ``s``::

    A(x) = || x - G_s * x ||^2 / || x - mean(x) ||^2

with ``G_s`` a Gaussian of standard deviation ``s`` pixels (``../shared/design.md`` section 6).
For data whose finest detail is ``d`` pixels of a grid, ``s = d / 2``: half an MNIST pixel is
``min(H, W) / 56`` pixels, the default :data:`DEFAULT_FRACTION` of the shorter side. The measure
of samples is compared with the same measure of real images *resampled to the grid* (bicubic
from the training resolution, :func:`real_reference`): a ratio of 1 means as smooth as real data,
below 1 blurred, above 1 carrying detail the data does not have (speckles, rings, grain). A
classifier-feature Fréchet distance resizes to the classifier's input and smooths these
artifacts away, so this measure is reported beside it by ``infdiff evaluate``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DEFAULT_FRACTION", "ArtifactMeter", "gaussian_blur", "highfreq_share", "artifact_sigma", "real_reference"]

#: ``s`` as a fraction of the shorter side: half a pixel of a 28-pixel image (MNIST).
DEFAULT_FRACTION = 1.0 / 56.0


def _kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = max(1, math.ceil(4.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(device=device, dtype=dtype)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)`` with std ``sigma`` pixels, reflective borders."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    b, c, h, w = x.shape
    k = _kernel(sigma, x.dtype, x.device)
    r = (k.numel() - 1) // 2
    y = x.reshape(b * c, 1, h, w)
    # reflect padding needs pad < size: replicate for tiny images
    mode = "reflect" if r < min(h, w) else "replicate"
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return y.reshape(b, c, h, w)


def artifact_sigma(grid: tuple[int, int], fraction: float = DEFAULT_FRACTION) -> float:
    """``s`` in pixels on ``grid``: ``fraction`` of the shorter side."""
    return fraction * min(int(grid[0]), int(grid[1]))


def highfreq_share(x: Tensor, sigma: float) -> Tensor:
    """``A(x)`` per image, ``(B,)``: the share of the variance above the scale ``sigma`` pixels.

    Images with no variance (flat) count as 0.
    """
    x = x.double()
    residual = (x - gaussian_blur(x, sigma)).pow(2).sum(dim=(1, 2, 3))
    total = (x - x.mean(dim=(1, 2, 3), keepdim=True)).pow(2).sum(dim=(1, 2, 3))
    return torch.where(total > 0, residual / total.clamp_min(1e-300), torch.zeros_like(total))


def real_reference(source: object, indices: np.ndarray, resolution: int, grid: tuple[int, int]) -> Tensor:
    """Real images at the training ``resolution`` resampled bicubically to ``grid``, in ``[-1, 1]``.

    Uses the deterministic validation rendering of ``source`` (an
    :class:`~lightning_infdiff.data.sources.ImageSource`). A non-square grid is placed as the FID
    reference places it (:func:`~lightning_infdiff.metrics.reference.render_real`): the centre crop
    of the square at ``max(H, W)`` on a ``stretch`` canvas, the square at ``min(H, W)`` with its
    border replicated across a ``wide`` one.
    """
    from ..coords import as_grid
    from ..data.seeding import STREAM_VAL, derive_seed

    g = as_grid(grid)
    h, w = g
    wide = not g.unit and g.canvas == "wide"
    images = []
    for index in indices:
        rng = np.random.default_rng(derive_seed(0, STREAM_VAL, int(index)))
        image, _ = source.load(int(index), int(resolution), rng, False)  # type: ignore[attr-defined]
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32)))
    x = torch.stack(images)
    side = min(h, w) if wide else max(h, w)
    if side != resolution:
        x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)
    if wide:
        top, left = (h - side) // 2, (w - side) // 2
        x = F.pad(x, (left, w - side - left, top, h - side - top), mode="replicate")
    elif (h, w) != (side, side):
        top, left = (side - h) // 2, (side - w) // 2
        x = x[:, :, top : top + h, left : left + w]
    return x


class ArtifactMeter:
    """Mean ``A(x)`` of the images fed to it on one grid (the interface of ``FrechetDistance``'s
    generated side: ``reset()``, ``update(images, real=False)``, ``compute()``).

    Args:
        grid: the ``(H, W)`` grid of the images.
        fraction: ``s`` as a fraction of the shorter side (:data:`DEFAULT_FRACTION`).
    """

    def __init__(self, grid: tuple[int, int], fraction: float = DEFAULT_FRACTION) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        self.sigma = artifact_sigma(self.grid, fraction)
        self.values: list[Tensor] = []

    def reset(self) -> None:
        """Forget the images seen so far."""
        self.values.clear()

    def update(self, images: Tensor, real: bool = False) -> None:
        """Add images ``(B, C, H, W)``: ``uint8`` in ``[0, 255]`` or floats in ``[-1, 1]``."""
        if real:
            raise ValueError("ArtifactMeter measures generated images only; use real_reference for real ones")
        x = images.double() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.double()
        self.values.append(highfreq_share(x.cpu(), self.sigma))

    def compute(self) -> float:
        """The mean share over every image added."""
        if not self.values:
            raise ValueError("ArtifactMeter.compute() before any update()")
        return float(torch.cat(self.values).mean())
