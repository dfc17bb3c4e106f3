"""Inpainting at the image's own resolution: reconstruction guidance or RePaint-style replacement.

Given an image ``x_bar`` and a known-pixel mask ``m`` (1 = keep, 0 = fill; see
:mod:`.common`), sample the missing region with an unconditionally trained model:

* ``method="guidance"`` -- ∞-Diff section 5 (Bond-Taylor & Willcocks 2024):
  ``x_{t-1} <- x_{t-1} - lambda grad_{x_t} || m ⊙ (x0_hat(x_t) - T x_bar) ||^2``. With the
  mollified process the model's estimate is of ``T x0``, so the target is the mollified input
  ``T x_bar`` (``T = I`` for plain diffusion).
* ``method="replace"`` -- RePaint (Lugmayr et al. 2022, eq. 8):
  ``x_{t-1} <- m ⊙ (alpha_{t-1} T x_bar + sigma_{t-1} c T xi) + (1 - m) ⊙ x_{t-1}`` after every
  step, with optional resampling jumps (``resamplings > 1``: go back ``jump_length`` levels
  by forward noising and denoise again, which lets the filled region harmonise). The result
  finishes with a replacement: the known pixels are exactly the input's.

Both are hooks on :func:`lightning_infdiff.samplers.sample` (see :mod:`.guidance`); sample
``i`` depends only on ``seeds[i]``. Mollified models' estimates are Wiener-deblurred for output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ..processes import GaussianProcess, training_band
from ..samplers import ModelFn
from .common import as_batch, check_image, check_mask, match_batch, model_condition, module_device
from .guidance import conditioned_sample, noised, resampling_times

__all__ = ["inpaint", "INPAINT_METHODS"]

INPAINT_METHODS = ("guidance", "replace")


def inpaint(
    process: GaussianProcess,
    denoiser: torch.nn.Module | None,
    image: Tensor,
    mask: Tensor,
    seeds: Sequence[int],
    method: Literal["guidance", "replace"] = "replace",
    strength: float = 0.5,
    steps: int = 50,
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "dpmpp_3m"] = "ddpm",
    eta: float = 0.0,
    resamplings: int = 1,
    jump_length: int = 10,
    clip: Literal["none", "static", "dynamic"] = "static",
    cond: Tensor | None = None,
    guidance_scale: float = 1.0,
    paste: bool | None = None,
    deblur: bool = True,
    band: int | None = None,
    progress: bool = False,
    model_fn: ModelFn | None = None,
) -> Tensor:
    """Fill the unknown pixels of ``image`` (``mask == 0``); returns ``(B, C, H, W)`` in ``[-1, 1]``.

    Args:
        process: the model's diffusion process.
        denoiser: the network (put in eval mode here); may be ``None`` when ``model_fn`` is given.
        image: ``(C, H, W)`` or ``(B, C, H, W)`` in ``[-1, 1]`` with the model's channel count;
            a single image is repeated for every seed.
        mask: known-pixel mask of the image's size (1 = known, 0 = fill).
        seeds: one seed per output sample.
        method: ``guidance`` (∞-Diff reconstruction guidance) or ``replace`` (RePaint).
        strength: guidance ``lambda`` (``method="guidance"``).
        steps: solver steps (without resampling jumps).
        sampler: ``ddpm`` (RePaint's choice), ``ddim``, ``dpmpp_2m``, ``euler``, ``heun`` or ``dpmpp_3m``.
        eta: DDIM stochasticity.
        resamplings: RePaint's ``r`` (1 = no resampling); ``jump_length`` its ``j``.
        clip: clipping of the clean estimate during sampling.
        cond: optional class labels (default: the null class / unconditional).
        guidance_scale: classifier-free guidance scale with ``cond``.
        paste: copy the known pixels of ``image`` into the output at the end (default: True for
            ``replace``, which finishes with a replacement, False for ``guidance``).
        deblur: Wiener-deblur mollified estimates before output (and before pasting).
        band: the training grid's side, the band the deblur restores (default: the denoiser's
            ``train_resolution``, else the output grid's; see :func:`~lightning_infdiff.processes.training_band`).
        progress: show a progress bar.
        model_fn: advanced: a ready ``f(x, logsnr)`` replacing ``denoiser`` (closed-form tests).

    Raises:
        ValueError: for a mask of the wrong size, wrong channel count, unknown method, etc.
    """
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; expected one of {INPAINT_METHODS}")
    channels = getattr(denoiser, "in_channels", None) if denoiser is not None else None
    image = check_image(image, channels if channels is not None else as_batch(image).shape[1])
    mask = check_mask(mask, image)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one sample")
    image, mask = match_batch(image, mask, len(seeds))
    b, c, h, w = image.shape
    device = module_device(denoiser)
    image, mask = image.to(device), mask.to(device)
    y_bar = process.operator.apply(image)  # T x_bar: what the model's estimate targets
    known = mask.expand_as(image)

    def residual(y0: Tensor) -> Tensor:
        return known * (y0 - y_bar)

    def replace(x: Tensor, logsnr: Tensor, noise: Callable[[], Tensor]) -> Tensor:
        return known * noised(y_bar, logsnr, noise) + (1.0 - known) * x

    times = resampling_times(steps, jump_length, resamplings) if method == "replace" else None
    was_training = denoiser.training if denoiser is not None else False
    if denoiser is not None:
        denoiser.eval()
    try:
        y0 = conditioned_sample(
            process, denoiser, (h, w), seeds, c,
            residual=residual if method == "guidance" else None,
            strength=strength if method == "guidance" else 0.0,
            replace=replace if method == "replace" else None,
            times=times, steps=steps, sampler=sampler, eta=eta, clip=clip,
            cond=model_condition(denoiser, cond, b, device), guidance_scale=guidance_scale,
            device=device, progress=progress, model_fn=model_fn,
        )
    finally:
        if denoiser is not None:
            denoiser.train(was_training)
    out = process.display(y0, band=training_band(denoiser, y0.shape[-2:], band)) if deblur else y0
    if paste is None:
        paste = method == "replace"
    if paste:
        out = known * image + (1.0 - known) * out
    return out.clamp(-1.0, 1.0)
