"""Resolution-aware sampling: what changes when a model samples on a grid it was not trained on.

Every model here samples on any ``H x W`` grid (square or not) through
:func:`lightning_infdiff.samplers.sample`. Our choice of what changes with the sampling grid
``(H', W')`` versus the training grid ``(H, W)``, and what stays fixed:

**Changes (bound to the sampling grid):**

1. *The noise schedule*, if it is resolution-aware. ``sample`` evaluates
   ``process.schedule.logsnr(t, grid)`` on the sampling grid, so simple diffusion's shifted
   schedule (Hoogeboom et al. 2023, eq. 5) becomes ``lambda(t) + 2 log(reference / sqrt(H' W'))``:
   at 2x the side, every level has 4x less SNR, which keeps the SNR of the *low frequencies*
   (what a pixel of the reference grid averages) where training put it. Plain cosine/linear
   schedules ignore the grid (``lambda(t)`` unchanged).
2. *The mollifier, in pixels.* :class:`~lightning_infdiff.operators.HeatKernelOperator`'s width
   is a fraction of the shorter image side (∞-Diff section 3, defined in domain units), so the
   same *physical* blur applies at every grid: ``width * min(H', W')`` pixels. A DCT mode
   ``cos(pi k x)`` is multiplied by ``exp(-(pi k width)^2 / 2)`` at every resolution.
3. *The noise scale.* The mollified noise ``c T xi`` is rescaled per grid so its pointwise
   variance is the same at every resolution: unit variance by default (``normalise_noise``),
   or ∞-Diff's rule ``c = sqrt(H' W') / reference`` (the ``N'/N`` scaling of the white noise
   before blurring) with ``normalise_noise=False``.
4. *Sparse convolution kernels* (sparse neural operator): defined at ``train_resolution`` and
   resampled to the sampling grid (same support in domain units), with the neighbour-count
   normalisation keeping the response (:mod:`lightning_infdiff.denoisers.layers.sparse_conv`).

**Stays fixed:** the network weights, the number of solver steps and their placement in ``t``,
the classifier-free guidance scale, and coordinates in domain units (a larger square grid is a
denser sampling of the same square). The sparse operator's inner U-Net grid keeps its cells
per domain unit. (Grid networks keep their number of downsamplings, so their token/feature
grids grow with the image: U-ViT's transformer sees 2x more tokens per side at 2x; conv U-Nets
keep their receptive field in pixels.)

*One geometry for non-square grids* (:mod:`lightning_infdiff.coords`): a grid is a window onto
the image plane, and the mollifier, the noise scale, the schedule shift, the sparse kernels, the
inner grid and every denoiser's positional input read it from the same
:class:`~lightning_infdiff.coords.Grid`. On a ``wide`` canvas (the default of ``infdiff sample``
and ``generate``) pixels stay square at the pitch of the shorter side and the window grows along
the longer one: a 32x64 canvas of a model trained at 32x32 is a wider view with the training
kernels, blur and schedule, undistorted content. On a ``stretch`` canvas the unit square is
stretched to the grid: the kernels are resized per axis (e.g. ``3 x 7`` at 16x32 for a 3x3
kernel trained at 16x16), the blur is ``width * H'`` and ``width * W'`` pixels, the shift uses
``sqrt(H' W')``.

Sampling above the training resolution on a square grid therefore asks the model for *more
detail of the same image*; a non-square wide canvas for a larger field of view.
:func:`resolution_plan` reports these quantities for a given process, denoiser and pair of grids.
"""

from __future__ import annotations

from typing import Any

import torch

from ..coords import as_grid, check_grid
from ..processes import GaussianProcess

__all__ = ["resolution_plan"]


def resolution_plan(
    process: GaussianProcess, train_grid: tuple[int, int], grid: tuple[int, int], denoiser: Any | None = None
) -> dict[str, dict[str, Any]]:
    """What the process and denoiser use on ``train_grid`` versus ``grid`` (see module docstring).

    ``grid`` may be a :class:`~lightning_infdiff.coords.Grid` (its canvas decides a non-square
    grid's geometry); a plain tuple is the unit square (``stretch``).

    Returns:
        ``{"train": {...}, "sample": {...}}`` with keys ``grid``, ``canvas``, ``pitch`` (domain
        units per pixel), ``logsnr_max``, ``logsnr_min``, ``logsnr_mid`` (at ``t = 1/2``),
        ``blur_pixels`` (std of the mollifier in pixels per axis, 0 for plain diffusion),
        ``noise_scale`` (``c``) and, for denoisers with resized sparse kernels, ``kernel_size``
        and, for the sparse operator, ``inner_grid``.
    """
    from ..operators import HeatKernelOperator

    out: dict[str, dict[str, Any]] = {}
    for name, g in (("train", train_grid), ("sample", grid)):
        g = as_grid(check_grid(g))
        sch, op = process.schedule, process.operator.at(g.canvas)
        row: dict[str, Any] = {
            "grid": tuple(g),
            "canvas": g.canvas,
            "pitch": g.pitch,
            "logsnr_max": sch.logsnr_max(g),
            "logsnr_min": sch.logsnr_min(g),
            "logsnr_mid": float(sch.logsnr(torch.tensor(0.5, dtype=torch.float64), g)),
            "blur_pixels": op.pixels(g) if isinstance(op, HeatKernelOperator) else (0.0, 0.0),
            "noise_scale": op.noise_scale(g),
        }
        ks, tr = getattr(denoiser, "kernel_size", None), getattr(denoiser, "train_resolution", None)
        if ks is not None and tr is not None:
            from ..denoisers.layers.sparse_conv import resized_kernel_size

            dy, dx = g.density
            row["kernel_size"] = (resized_kernel_size(ks, tr, dy), resized_kernel_size(ks, tr, dx))
        if hasattr(denoiser, "inner_grid"):
            row["inner_grid"] = tuple(denoiser.inner_grid(g))
        out[name] = row
    return out
