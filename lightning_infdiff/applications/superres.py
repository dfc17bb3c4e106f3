"""Super-resolution with a resolution-independent model: an ``H x W`` image -> ``sH x sW``.

The model samples directly on the high-resolution grid (resolution-aware sampling: schedule
bound to that grid, mollifier width in domain units; see :mod:`.resolution`) while the sample
is kept consistent with the low-resolution input ``y`` under area downsampling ``D``:

* ``method="guidance"`` -- reconstruction guidance (∞-Diff section 5, with the measurement
  operator ``D`` in place of the inpainting mask):
  ``x_{t-1} <- x_{t-1} - lambda grad_{x_t} S || D(x0_hat(x_t)) - T_low y ||^2`` with ``S = H'W'/(HW)``
  (so that ``sqrt(S) D`` has unit norm and ``lambda`` means what it means for inpainting). Under the
  mollifier the estimate is of ``T x0``; since ``T`` is the same physical blur at every grid,
  ``D T_high x ~ T_low D x`` and the target is the mollified input ``T_low y``. Any target size.
* ``method="replace"`` -- replacement in the downsampled subspace (ILVR, Choi et al. 2021,
  eq. 7, with the box projector ``U D``): after each step
  ``x_{t-1} <- x_{t-1} + U(alpha_{t-1} T_low y + sigma_{t-1} D n - D x_{t-1})`` with ``n``
  fresh mollified noise and ``U`` nearest upsampling (``D U = I`` for integer factors, which
  this method requires).
* ``method="autoencoder"`` -- encode the low-resolution image with a diffusion-autoencoder
  denoiser and decode on the high-resolution grid (∞-Diff Fig. 8); needs a denoiser with
  ``encode(values, coords, grid) -> z`` and a ``generate(grid, seeds, latents=z)`` (the
  :class:`~lightning_infdiff.lit.DiffusionModule` of a diffusion-autoencoder model). Nothing
  ties the decoded image to the input beyond the latent: ``paste`` projects it.

With ``paste`` (default for ``replace``) the output finishes with the Euclidean projection onto
``{x in [-1, 1]^n : D x = y}`` (:func:`.common.project_block_means`; ``x + U(y - D x)`` when no
pixel saturates), so ``D(x) = y`` to bisection precision (integer factors).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from ..coords import full_coords
from ..processes import GaussianProcess, training_band
from ..samplers import ModelFn
from ..schedules import alpha_sigma
from .common import (
    area_downsample,
    as_batch,
    check_image,
    integer_factors,
    match_batch,
    model_condition,
    module_device,
    nearest_upsample,
    project_block_means,
)
from .guidance import conditioned_sample

__all__ = ["superres", "target_size", "SUPERRES_METHODS"]

SUPERRES_METHODS = ("guidance", "replace", "autoencoder")


def target_size(low: Sequence[int], size: Sequence[int] | None = None, scale: float | None = None) -> tuple[int, int]:
    """The output grid from exactly one of ``size`` ``(H, W)`` and ``scale`` (>= 1).

    Raises:
        ValueError: if both or neither are given, ``scale < 1``, or ``size`` is smaller than ``low``.
    """
    if (size is None) == (scale is None):
        raise ValueError("give exactly one of size (H, W) and scale (a factor >= 1)")
    if scale is not None:
        if not scale >= 1.0:
            raise ValueError(f"scale factor must be >= 1 (super-resolution enlarges), got {scale}")
        return max(2, round(low[0] * scale)), max(2, round(low[1] * scale))
    hw = (int(size[0]), int(size[1]))  # type: ignore[index]
    if hw[0] < low[0] or hw[1] < low[1]:
        raise ValueError(f"target size {hw[0]}x{hw[1]} is smaller than the input {low[0]}x{low[1]}")
    return hw


def superres(
    process: GaussianProcess,
    denoiser: torch.nn.Module | None,
    image: Tensor,
    seeds: Sequence[int],
    size: Sequence[int] | None = None,
    scale: float | None = None,
    method: Literal["guidance", "replace", "autoencoder"] = "guidance",
    strength: float = 0.5,
    steps: int = 50,
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "dpmpp_3m"] = "ddpm",
    eta: float = 0.0,
    clip: Literal["none", "static", "dynamic"] = "static",
    cond: Tensor | None = None,
    guidance_scale: float = 1.0,
    paste: bool | None = None,
    deblur: bool = True,
    band: int | None = None,
    progress: bool = False,
    model_fn: ModelFn | None = None,
    generate: Callable[..., Tensor] | None = None,
) -> Tensor:
    """Upsample ``image`` to ``size`` (or by ``scale``); returns ``(B, C, H', W')`` in ``[-1, 1]``.

    Args:
        process: the model's diffusion process.
        denoiser: the network (put in eval mode here); may be ``None`` when ``model_fn`` is given.
        image: low-resolution ``(C, H, W)`` or ``(B, C, H, W)`` in ``[-1, 1]``; a single image
            is repeated for every seed.
        seeds: one seed per output sample.
        size: target ``(H', W')``; or ``scale``: a factor >= 1 of the input size.
        method: ``guidance``, ``replace`` (integer factors only) or ``autoencoder``.
        strength: guidance ``lambda`` (``method="guidance"``).
        steps, sampler, eta, clip: sampler settings (see :func:`~lightning_infdiff.samplers.sample`).
        cond, guidance_scale: optional class labels and classifier-free guidance scale.
        paste: finish with the projection onto ``{x in [-1, 1]^n : D x = y}`` (default: ``replace``
            only; integer factors only).
        deblur: Wiener-deblur mollified estimates before output.
        band: the training grid's side, the band the deblur restores (default: the denoiser's
            ``train_resolution``, else the output grid's; see :func:`~lightning_infdiff.processes.training_band`).
        progress: show a progress bar.
        model_fn: advanced: a ready ``f(x, logsnr)`` on the target grid replacing ``denoiser``.
        generate: for ``autoencoder``: ``generate(grid, seeds, latents=z, ...)`` (e.g.
            ``DiffusionModule.generate``).

    Raises:
        ValueError: for a scale below 1, a target smaller than the input, the wrong channel
            count, or ``replace``/``paste`` with a non-integer factor.
        NotImplementedError: for ``autoencoder`` without an encoder.
    """
    if method not in SUPERRES_METHODS:
        raise ValueError(f"unknown super-resolution method {method!r}; expected one of {SUPERRES_METHODS}")
    channels = getattr(denoiser, "in_channels", None) if denoiser is not None else None
    image = check_image(image, channels if channels is not None else as_batch(image).shape[1])
    low = (image.shape[-2], image.shape[-1])
    high = target_size(low, size, scale)
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must name at least one sample")
    if paste is None:
        paste = method == "replace"
    exact = integer_factors(low, high) is not None
    if (method == "replace" or paste) and not exact:
        raise ValueError(
            f"{'replacement' if method == 'replace' else 'paste'} needs integer factors, but "
            f"{low[0]}x{low[1]} -> {high[0]}x{high[1]} is not: use method='guidance' without paste, or such a size"
        )
    image, _ = match_batch(image, None, len(seeds))
    device = module_device(denoiser)
    image = image.to(device)
    if method == "autoencoder":
        out = _autoencoder(denoiser, image, high, seeds, generate, steps=steps, sampler=sampler, deblur=deblur)
        return project_block_means(out.clamp(-1.0, 1.0), image) if paste else out.clamp(-1.0, 1.0)
    b, c = image.shape[:2]
    y_low = process.operator.apply(image)  # T_low y

    # sqrt(S) D has unit operator norm (S = pixels per low-res pixel), so a given lambda acts
    # on the measured subspace as in inpainting (stable for lambda < 1 once y0_hat ~ x_t / alpha)
    norm = (high[0] * high[1] / (low[0] * low[1])) ** 0.5

    def residual(y0: Tensor) -> Tensor:
        return norm * (area_downsample(y0, low) - y_low)

    def replace(x: Tensor, logsnr: Tensor, noise: Callable[[], Tensor]) -> Tensor:
        a, s = alpha_sigma(logsnr.float())
        ref = a * y_low + s * area_downsample(noise(), low)
        return x + nearest_upsample(ref - area_downsample(x, low), high)

    was_training = denoiser.training if denoiser is not None else False
    if denoiser is not None:
        denoiser.eval()
    try:
        y0 = conditioned_sample(
            process, denoiser, high, seeds, c,
            residual=residual if method == "guidance" else None,
            strength=strength if method == "guidance" else 0.0,
            replace=replace if method == "replace" else None,
            steps=steps, sampler=sampler, eta=eta, clip=clip,
            cond=model_condition(denoiser, cond, b, device), guidance_scale=guidance_scale,
            device=device, progress=progress, model_fn=model_fn,
        )
    finally:
        if denoiser is not None:
            denoiser.train(was_training)
    out = process.display(y0, band=training_band(denoiser, y0.shape[-2:], band)) if deblur else y0
    if paste:
        return project_block_means(out.clamp(-1.0, 1.0), image)
    return out.clamp(-1.0, 1.0)


def _autoencoder(
    denoiser: torch.nn.Module | None,
    image: Tensor,
    high: tuple[int, int],
    seeds: list[int],
    generate: Callable[..., Tensor] | None,
    **kwargs: object,
) -> Tensor:
    """Encode at the input grid, decode at ``high`` (∞-Diff Fig. 8); ``kwargs`` go to ``generate``
    when its signature has them (``steps``, ``sampler``, ``deblur``)."""
    encode = getattr(denoiser, "encode", None)
    if encode is None:
        raise NotImplementedError(
            f"method='autoencoder' needs a diffusion-autoencoder denoiser with an encode(values, coords, grid) "
            f"method; {type(denoiser).__name__} has none. Use method='guidance' or 'replace'."
        )
    if generate is None or "latents" not in inspect.signature(generate).parameters:
        raise NotImplementedError(
            "method='autoencoder' needs generate(grid, seeds, latents=z) (DiffusionModule.generate of a "
            "diffusion-autoencoder model); this model's generate has no 'latents' argument"
        )
    b, c, h, w = image.shape
    values = image.reshape(b, c, h * w).transpose(1, 2)
    with torch.no_grad():
        z = encode(values, full_coords(b, (h, w), image.device), (h, w))
    params = inspect.signature(generate).parameters
    extra = {k: v for k, v in kwargs.items() if k in params}
    return generate(high, seeds, latents=z, **extra)
