"""Progressive sampling: start on a coarse grid and upsample along the reverse process, one model.

∞-Diff's conclusion (Bond-Taylor & Willcocks 2024, section 7) notes that methods which upsample
*during* the backward process (subspace diffusion, Jing et al. 2022; dimensionality-varying
diffusion, Zhang et al. 2023) need a model per resolution, and that a resolution-invariant model
permits this with a single model. We follow subspace diffusion's transfer rule.

For an integer factor ``f = f_y f_x`` (pixels per coarse pixel), the block means ``D x`` of a
fine state ``x = alpha_h y0 + sigma_h n`` (unit white ``n``) carry noise of variance
``sigma_h^2 / f``, i.e. SNR ``f * SNR_h``. A coarse state ``x_l`` at ``lambda_l`` therefore
matches the fine state's block means at

    ``lambda_h = lambda_l - log f``,  with  ``D x = (alpha_h / alpha_l) x_l``,

(the simple-diffusion shift, seen from the other side), and the rest of the fine state is fresh
noise orthogonal to the block means::

    x_h = U((alpha_h / alpha_l) x_l) + sigma_h (n - U D n),     n fresh noise on the fine grid.

This is exact for plain diffusion (white noise) when the fine data's block means are
distributed as the coarse data (smooth images); with a mollifier the noise is correlated across
blocks and the transfer is approximate. Each stage is an ordinary :func:`~lightning_infdiff.samplers.sample`
call (``logsnrs`` + ``x_init``) on its own grid; the stage's time grid continues from
``t = schedule.t_of_logsnr(lambda_h, grid)``. Noise streams per stage are derived from the
per-sample seeds, so sample ``i`` depends only on ``seeds[i]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..data.seeding import derive_seed
from ..processes import GaussianProcess
from ..samplers import ModelFn, SeededNoise, StepInfo, make_model_fn, sample
from ..schedules import alpha_sigma
from .common import area_downsample, integer_factors, module_device, nearest_upsample

__all__ = ["progressive_sample", "upsample_state"]


def upsample_state(
    process: GaussianProcess, x: Tensor, logsnr: float, grid: tuple[int, int], noise: Tensor
) -> tuple[Tensor, float]:
    """Move a coarse state ``x`` at ``logsnr`` to ``grid`` (see the module docstring).

    Args:
        noise: fresh mollified noise ``c T xi`` on ``grid`` (white noise for plain diffusion).

    Returns:
        ``(x_fine, logsnr_fine)`` with ``logsnr_fine = logsnr - log(f_y f_x)``.
    """
    low = (x.shape[-2], x.shape[-1])
    factors = integer_factors(low, grid)
    if factors is None or min(factors) < 1:
        raise ValueError(f"progressive grids must grow by integer factors, got {low[0]}x{low[1]} -> {grid[0]}x{grid[1]}")
    lam_l = torch.tensor(float(logsnr))
    lam_h = lam_l - math.log(factors[0] * factors[1])
    a_l, _ = alpha_sigma(lam_l)
    a_h, s_h = alpha_sigma(lam_h)
    detail = noise - nearest_upsample(area_downsample(noise, low), grid)
    x_h = nearest_upsample((a_h / a_l) * x, grid) + s_h * detail
    return x_h, float(lam_h)


@torch.no_grad()
def progressive_sample(
    process: GaussianProcess,
    denoiser: torch.nn.Module | None,
    grids: Sequence[Sequence[int]],
    seeds: Sequence[int],
    channels: int,
    switch_times: Sequence[float],
    steps: Sequence[int],
    sampler: str = "ddpm",
    clip: str = "static",
    cond: Tensor | None = None,
    guidance_scale: float = 1.0,
    progress: bool = False,
    model_fn: ModelFn | None = None,
) -> Tensor:
    """Sample on ``grids[0]`` and move to each next grid at ``switch_times``; returns ``T x0_hat`` on ``grids[-1]``.

    Args:
        process: the diffusion process.
        denoiser: the network (eval mode); or ``None`` with a grid-agnostic ``model_fn``.
        grids: increasing grids ``(H, W)``, each an integer multiple of the previous one.
        seeds: one seed per sample.
        channels: image channels.
        switch_times: for each grid but the last, the time ``t`` (on that grid's schedule) at
            which to move to the next grid; decreasing, in ``(0, 1)``.
        steps: solver steps per stage (``len(grids)`` entries).
        sampler, clip, cond, guidance_scale, progress: as in :func:`~lightning_infdiff.samplers.sample`.
        model_fn: advanced: a model function valid on every grid (closed-form tests).
    """
    grids = [(int(g[0]), int(g[1])) for g in grids]
    if len(grids) < 1 or len(switch_times) != len(grids) - 1 or len(steps) != len(grids):
        raise ValueError(
            f"need len(switch_times) = len(grids) - 1 and len(steps) = len(grids); got {len(grids)} grids, "
            f"{len(switch_times)} switch times, {len(steps)} step counts"
        )
    if any(not 0.0 < t < 1.0 for t in switch_times) or list(switch_times) != sorted(switch_times, reverse=True):
        raise ValueError(f"switch_times must decrease within (0, 1), got {list(switch_times)}")
    if any(k < 1 for k in steps):
        raise ValueError(f"every stage needs >= 1 step, got {list(steps)}")
    seeds = list(seeds)
    device = module_device(denoiser)
    sch = process.schedule
    t_start, lam_start, x = 1.0, None, None
    for k, grid in enumerate(grids):
        t_end = switch_times[k] if k < len(grids) - 1 else 0.0
        ts = torch.linspace(t_start, t_end, steps[k] + 1, dtype=torch.float64)
        lams = sch.logsnr(ts, grid).float()
        if lam_start is not None:
            lams[0] = lam_start
        fn = model_fn if model_fn is not None else make_model_fn(denoiser, grid, cond, guidance_scale, process=process)
        stage_seeds = seeds if k == 0 else [derive_seed(s, "progressive", k) for s in seeds]
        last: dict[str, Tensor] = {}

        def keep(info: StepInfo, last: dict[str, Tensor] = last) -> None:
            last["x"] = info.x

        y0 = sample(
            process, denoiser, grid, stage_seeds, channels=channels, sampler=sampler, clip=clip, device=device,
            progress=progress, model_fn=fn, logsnrs=lams, callback=keep, x_init=x,
        )
        if k == len(grids) - 1:
            return y0
        nxt = grids[k + 1]
        draw = SeededNoise([derive_seed(s, "progressive-detail", k) for s in seeds], (channels, *nxt), device)
        with torch.autocast(device_type=device.type, enabled=False):
            noise = process.operator.apply(draw() * process.operator.noise_scale(nxt))
        x, lam_start = upsample_state(process, last["x"], float(lams[-1]), nxt, noise)
        t_start = float(sch.t_of_logsnr(torch.tensor(lam_start, dtype=torch.float64), nxt))
        t_next = switch_times[k + 1] if k + 1 < len(grids) - 1 else 0.0
        if not t_start > t_next:
            raise ValueError(
                f"switch_times too close: entering {nxt[0]}x{nxt[1]} at t={t_start:.3f} (logSNR {lam_start:.2f}) "
                f"but that stage ends at t={t_next}"
            )
    raise AssertionError("unreachable")
