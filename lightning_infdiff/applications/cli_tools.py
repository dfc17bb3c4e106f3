"""``infdiff inpaint`` and ``infdiff superres``: the applications as command-line tools.

Examples::

    infdiff inpaint --ckpt_path last.ckpt --image digit.png --mask left-half --method replace --num 4
    infdiff inpaint --ckpt_path last.ckpt --image photo.png --mask holes.png --method guidance --strength 2
    infdiff superres --ckpt_path last.ckpt --image small.png --scale 2 --method guidance
    infdiff superres --ckpt_path last.ckpt --image small.png --size 64x96 --method guidance
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

import torch

from ..precision import inference_autocast
from .common import MASK_SHAPES, load_image, load_mask, named_mask

__all__ = ["inpaint_command", "superres_command"]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _labels(module: object, labels: list[int] | None, n: int, guidance_scale: float) -> torch.Tensor | None:
    from ..cli import check_conditioning

    check_conditioning(getattr(module.denoiser, "num_classes", 0), labels, guidance_scale)  # type: ignore[attr-defined]
    if not labels:
        return None
    return torch.tensor([labels[i % len(labels)] for i in range(n)])


def _save(out: Path, inputs: torch.Tensor, results: torch.Tensor, seeds: list[int]) -> Path:
    from ..images import save_grid, save_images

    save_images(results, out, [f"seed{s}" for s in seeds])
    grid = out / "grid.png"
    save_grid(torch.cat([inputs, results]), grid, nrow=len(seeds) + len(inputs))
    return grid


def inpaint_command(
    ckpt_path: str,
    image: str,
    mask: str = "left-half",
    method: Literal["guidance", "replace"] = "replace",
    strength: float = 0.5,
    num: int = 4,
    seed: int = 0,
    steps: int = 50,
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "dpmpp_3m"] = "ddpm",
    resamplings: int = 1,
    jump_length: int = 10,
    labels: list[int] | None = None,
    guidance_scale: float = 1.0,
    out: str = "inpainted",
    precision: Literal["auto", "32", "bf16", "16"] = "auto",
    device: str = "cpu",
) -> Path:
    """Fill a masked region of an image at the image's own resolution.

    Writes ``<out>/seed<k>.png`` per sample and ``<out>/grid.png`` (masked input, then the samples).

    Args:
        ckpt_path: checkpoint written by ``infdiff fit``.
        image: image file (converted to the model's channel count).
        mask: a mask file of the image's size (white = region to fill) or a named region to fill:
            left-half, right-half, top-half, bottom-half, center-square, random-strokes.
        method: ``replace`` (RePaint) or ``guidance`` (∞-Diff reconstruction guidance).
        strength: guidance strength lambda (``guidance``).
        num: number of samples (seeds ``seed .. seed + num - 1``).
        seed: first seed (also seeds ``random-strokes``).
        steps: solver steps.
        sampler: ``ddpm``, ``ddim``, ``dpmpp_2m``, ``euler``, ``heun`` or ``dpmpp_3m``.
        resamplings: RePaint resamplings per jump point (1 = none).
        jump_length: RePaint jump length in steps.
        labels: class labels for conditional models (default: unconditional).
        guidance_scale: classifier-free guidance scale with labels.
        out: output folder.
        precision: ``auto`` (by the hardware: bf16 where the device has native bf16, else fp32;
            see :mod:`lightning_infdiff.precision`), ``32``, ``bf16`` or ``16`` (CUDA), for the network only.
        device: ``cpu``, ``cuda``, ...
    """
    from ..checkpoint import load_module
    from .inpaint import inpaint

    if num < 1:
        raise ValueError(f"--num must be positive, got {num}")
    module = load_module(ckpt_path).to(device)
    cond = _labels(module, labels, num, guidance_scale)  # refused before any work
    img = load_image(image, module.denoiser.in_channels)
    size = (img.shape[-2], img.shape[-1])
    if Path(mask).is_file():
        known = load_mask(mask, size)
    elif mask in MASK_SHAPES:
        known = named_mask(mask, size, seed)
    else:
        raise ValueError(f"--mask {mask!r} is neither a file nor one of {MASK_SHAPES}")
    seeds = list(range(seed, seed + num))
    dev = torch.device(device)
    with inference_autocast(dev, precision, announce=_stderr):
        result = inpaint(
            module.process, module.denoiser, img, known, seeds, method=method, strength=strength, steps=steps,
            sampler=sampler, resamplings=resamplings, jump_length=jump_length,
            cond=cond, guidance_scale=guidance_scale, progress=True,
            band=module.data_resolution,
        )
    shown = known.to(img) * img + (1 - known.to(img)) * 0.0  # masked input, filled region grey
    grid = _save(Path(out), shown, result.cpu(), seeds)
    print(f"wrote {num} inpainted image(s) ({method}) of {size[0]}x{size[1]} to {out} and the grid {grid}")
    return grid


def superres_command(
    ckpt_path: str,
    image: str,
    scale: float | None = None,
    size: str | None = None,
    method: Literal["guidance", "replace", "autoencoder"] = "guidance",
    strength: float = 0.5,
    num: int = 4,
    seed: int = 0,
    steps: int = 50,
    sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "dpmpp_3m"] = "ddpm",
    labels: list[int] | None = None,
    guidance_scale: float = 1.0,
    out: str = "superres",
    precision: Literal["auto", "32", "bf16", "16"] = "auto",
    device: str = "cpu",
) -> Path:
    """Upsample an image with a resolution-independent model, consistent with it under area downsampling.

    Writes ``<out>/seed<k>.png`` per sample and ``<out>/grid.png`` (the input, nearest-upsampled, then the samples).

    Args:
        ckpt_path: checkpoint written by ``infdiff fit``.
        image: low-resolution image file (converted to the model's channel count).
        scale: upsampling factor (>= 1), or give ``size``.
        size: target size ``H`` or ``HxW`` (e.g. ``64`` or ``56x84``).
        method: ``guidance``, ``replace`` (integer factors) or ``autoencoder`` (diffusion-autoencoder models).
        strength: guidance strength lambda (``guidance``).
        num: number of samples.
        seed: first seed.
        steps: solver steps.
        sampler: ``ddpm``, ``ddim``, ``dpmpp_2m``, ``euler``, ``heun`` or ``dpmpp_3m``.
        labels: class labels for conditional models (default: unconditional).
        guidance_scale: classifier-free guidance scale with labels.
        out: output folder.
        precision: ``auto`` (by the hardware: bf16 where the device has native bf16, else fp32;
            see :mod:`lightning_infdiff.precision`), ``32``, ``bf16`` or ``16`` (CUDA), for the network only.
        device: ``cpu``, ``cuda``, ...
    """
    from ..checkpoint import load_module
    from ..cli import parse_grid
    from .common import nearest_upsample
    from .superres import superres, target_size

    if num < 1:
        raise ValueError(f"--num must be positive, got {num}")
    module = load_module(ckpt_path).to(device)
    cond = _labels(module, labels, num, guidance_scale)  # refused before any work
    img = load_image(image, module.denoiser.in_channels)
    low = (img.shape[-2], img.shape[-1])
    high = target_size(low, parse_grid(size) if size is not None else None, scale)
    seeds = list(range(seed, seed + num))
    dev = torch.device(device)
    with inference_autocast(dev, precision, announce=_stderr):
        result = superres(
            module.process, module.denoiser, img, seeds, size=high, method=method, strength=strength,
            steps=steps, sampler=sampler, cond=cond, guidance_scale=guidance_scale,
            progress=True, generate=module.generate, band=module.data_resolution,
        )
    grid = _save(Path(out), nearest_upsample(img, high), result.cpu(), seeds)
    print(f"wrote {num} image(s) of {high[0]}x{high[1]} from {low[0]}x{low[1]} ({method}) to {out} and the grid {grid}")
    return grid
