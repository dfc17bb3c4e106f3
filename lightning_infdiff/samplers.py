"""Samplers as pure functions: DDPM ancestral, DDIM(eta) and DPM-Solver++(2M).

All samplers walk a decreasing-noise logSNR grid ``lambda_0 < ... < lambda_K`` taken from the
process schedule *bound to the sampling grid* at ``t_i = 1 - i/K``, start from mollified noise
``c T xi``, and finish by returning the denoised estimate ``T x0_hat`` at ``lambda_K`` (as in
simple diffusion's appendix A). Noise is drawn per sample from its own seed, so sample ``i``
depends only on ``seeds[i]`` (not on the batch size or the number of processes). State and
coefficients are float32: the update maths are elementwise (never autocast) and the operator
turns autocast off itself, so an outer autocast makes only the network run in reduced precision.

With ``r = SNR_t / SNR_s`` and ``alpha, sigma`` from logSNR:

* DDPM ancestral (simple diffusion, appendix A): ``x_s = r (alpha_s/alpha_t) x_t + (1 - r) alpha_s y0_hat
  + sqrt(v) n`` with ``log v = g log((1-r) sigma_t^2) + (1-g) log((1-r) sigma_s^2)``, ``g`` the
  ``variance_interp`` (0 = posterior variance ``beta_tilde`` of ∞-Diff eq. 10, 1 = ``beta``).
* DDIM (Song et al. 2021, ∞-Diff eq. 6): ``x_s = alpha_s y0_hat + sqrt(sigma_s^2 - s_eta^2) n_hat
  + s_eta n`` with ``s_eta^2 = eta^2 (1 - r) sigma_s^2``.
* DPM-Solver++(2M) (Lu et al. 2022, alg. 2) with ``h = (lambda_s - lambda_t)/2``:
  ``x_s = (sigma_s/sigma_t) x_t - alpha_s expm1(-h) D`` where ``D = y0_hat`` on the first step and
  ``D = (1 + 1/(2 q)) y0_hat - y0_prev/(2 q)``, ``q = h_prev / h``, afterwards.

Here ``n`` is fresh mollified noise ``c T xi`` (white noise for plain diffusion).

Two hooks let applications (inpainting, super-resolution; :mod:`lightning_infdiff.applications`)
reuse these steps instead of re-implementing them: ``logsnrs`` gives the noise levels
explicitly, and a rise in logSNR-order (``lambda_{i+1} < lambda_i``) is a *forward* jump
``x_s = (alpha_s/alpha_t) x_t + sqrt(sigma_s^2 - (alpha_s/alpha_t)^2 sigma_t^2) n`` (RePaint's
resampling, Lugmayr et al. 2022, eq. 8 in logSNR form); ``callback`` sees every transition
(:class:`StepInfo`) and may return a replacement state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .coords import as_grid, check_grid, full_coords
from .processes import GaussianProcess
from .schedules import alpha_sigma

__all__ = ["SeededNoise", "StepInfo", "make_model_fn", "clip_x0", "sample", "SAMPLERS"]

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
ModelFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class StepInfo:
    """One transition of :func:`sample`, handed to its ``callback``.

    Attributes:
        index: transition number ``i`` (0-based).
        x: the new state at ``logsnr_to`` (``(B, C, H, W)`` float32).
        x_prev: the state at ``logsnr_from`` the transition started from.
        logsnr_from: ``lambda_i`` (0-dim float32 tensor).
        logsnr_to: ``lambda_{i+1}``; smaller than ``logsnr_from`` for a forward (re-noising) jump.
        y0: the clean estimate ``T x0_hat`` used by a denoising step; ``None`` for a forward jump.
        noise: draws fresh mollified noise ``c T xi`` from the per-sample seeded streams.
    """

    index: int
    x: Tensor
    x_prev: Tensor
    logsnr_from: Tensor
    logsnr_to: Tensor
    y0: Tensor | None
    noise: Callable[[], Tensor]


StepCallback = Callable[[StepInfo], "Tensor | None"]


class SeededNoise:
    """White noise drawn per sample from its own CPU generator (device-independent streams)."""

    def __init__(self, seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        self.gens = []
        for s in seeds:
            g = torch.Generator()
            g.manual_seed(int(s))
            self.gens.append(g)
        self.shape, self.device = tuple(shape), torch.device(device)

    def __call__(self) -> Tensor:
        """Next ``(B, *shape)`` draw, one row per seed."""
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.gens]).to(self.device)


def make_model_fn(
    denoiser: Callable[..., Tensor],
    grid: tuple[int, int],
    cond: Tensor | None = None,
    guidance_scale: float = 1.0,
    null_cond: Tensor | None = None,
) -> ModelFn:
    """Wrap a denoiser as ``f(x (B, C, H, W), logsnr (B,)) -> (B, C_out, H, W)`` on the full grid.

    Classifier-free guidance (Ho & Salimans 2022; simple diffusion eq. 7):
    ``out = out_null + w (out_cond - out_null)``, with ``w = guidance_scale`` (1 = conditional
    only). Both branches run as one batch. ``null_cond`` defaults to the denoiser's
    ``null_class`` when it has one.
    """
    grid = as_grid(grid)
    h, w = grid
    guided = cond is not None and guidance_scale != 1.0
    if guided and null_cond is None:
        null = getattr(denoiser, "null_class", None)
        if null is None:
            raise ValueError("classifier-free guidance needs a null condition: pass null_cond or use a class-conditional denoiser")
        null_cond = torch.full_like(cond, int(null))

    def fn(x: Tensor, logsnr: Tensor) -> Tensor:
        b, c = x.shape[:2]
        values = x.reshape(b, c, h * w).transpose(1, 2)
        coords = full_coords(b, grid, x.device)
        if guided:
            out = denoiser(
                torch.cat([values, values]), torch.cat([coords, coords]), torch.cat([logsnr, logsnr]),
                grid, torch.cat([cond, null_cond]),
            ).float()
            out_c, out_u = out.chunk(2)
            out = out_u + guidance_scale * (out_c - out_u)
        else:
            out = denoiser(values, coords, logsnr, grid, cond).float()
        return out.transpose(1, 2).reshape(b, -1, h, w)

    return fn


def clip_x0(y0: Tensor, mode: Literal["none", "static", "dynamic"] | None, quantile: float = 0.995) -> Tensor:
    """Clip the clean estimate: ``static`` to [-1, 1]; ``dynamic`` thresholding (Saharia et al. 2022):
    ``s = max(quantile(|y0|), 1)`` per sample, then ``clamp(y0, -s, s) / s``."""
    if mode in (None, "none"):
        return y0
    if mode == "static":
        return y0.clamp(-1.0, 1.0)
    if mode == "dynamic":
        s = torch.quantile(y0.flatten(1).abs(), quantile, dim=1).clamp(min=1.0)
        s = s.reshape(-1, *([1] * (y0.dim() - 1)))
        return torch.maximum(torch.minimum(y0, s), -s) / s
    raise ValueError(f"unknown clip mode {mode!r}; expected 'none', 'static' or 'dynamic'")


@torch.no_grad()
def sample(
    process: GaussianProcess,
    denoiser: Callable[..., Tensor],
    grid: tuple[int, int],
    seeds: Sequence[int],
    channels: int = 3,
    steps: int = 50,
    sampler: Literal["ddpm", "ddim", "dpmpp_2m"] = "ddim",
    eta: float = 0.0,
    variance_interp: float = 0.0,
    clip: Literal["none", "static", "dynamic"] = "static",
    cond: Tensor | None = None,
    guidance_scale: float = 1.0,
    null_cond: Tensor | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
    model_fn: ModelFn | None = None,
    spacing: Literal["auto", "time", "logsnr"] = "auto",
    logsnrs: Tensor | Sequence[float] | None = None,
    callback: StepCallback | None = None,
    x_init: Tensor | None = None,
) -> Tensor:
    """Draw ``len(seeds)`` samples on ``grid``; returns ``T x0_hat`` as ``(B, C, H, W)`` float32.

    Args:
        process: the diffusion process (schedule bound to ``grid``, operator, parametrisation).
        denoiser: the network (see :mod:`lightning_infdiff.denoisers.base`), in eval mode.
        grid: sampling grid ``(H, W)``; any size >= 2x2, square or not. A
            :class:`~lightning_infdiff.coords.Grid` says where it lies (``stretch``: the unit
            square, which a plain tuple means; ``wide``: square pixels, a wider view).
        seeds: one integer seed per sample.
        channels: image channels.
        steps: number of solver steps (network evaluations = steps + 1).
        sampler: ``ddpm``, ``ddim`` or ``dpmpp_2m``.
        eta: DDIM stochasticity (0 = deterministic, 1 ~ DDPM posterior variance).
        variance_interp: DDPM log-variance interpolation ``g`` (simple diffusion uses 0.2).
        clip: x0 clipping: ``none``, ``static`` or ``dynamic``.
        cond: optional condition ``(B,)``; ``guidance_scale``/``null_cond`` for CFG.
        device: where to run (defaults to the denoiser's parameters' device, else CPU).
        progress: show a progress bar.
        model_fn: advanced: a ready ``f(x, logsnr)`` replacing ``denoiser`` (e.g. exact denoisers in tests).
        spacing: ``time`` = steps uniform in ``t`` (the schedule decides where effort goes);
            ``logsnr`` = uniform in logSNR between the schedule's ends (DPM-Solver's default);
            ``auto`` = ``logsnr`` for ``dpmpp_2m`` and ``time`` otherwise. With the clipped
            cosine schedule, time spacing makes the end steps long in logSNR, which the
            multistep solver extrapolates badly (measured in ``tests/test_samplers.py``).
        logsnrs: explicit noise levels ``lambda_0, ..., lambda_K`` (overrides ``steps`` and
            ``spacing``); a decrease between neighbours is a forward re-noising jump (see the
            module docstring); the multistep history restarts after one.
        callback: called after every transition with a :class:`StepInfo`; a returned tensor
            replaces the state (e.g. replacement of known pixels), ``None`` keeps it.
        x_init: start state ``(B, C, H, W)`` at the first noise level (default: fresh noise
            ``c T xi``), e.g. an upsampled state of a coarser grid (:mod:`lightning_infdiff.applications.progressive`).
    """
    grid = as_grid(check_grid(grid))
    process = process.at(grid.canvas)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if len(seeds) == 0:
        raise ValueError("seeds must name at least one sample")
    if device is None:
        p = next(iter(getattr(denoiser, "parameters", lambda: iter(()))()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    fn = model_fn if model_fn is not None else make_model_fn(denoiser, grid, cond, guidance_scale, null_cond)
    op = process.operator
    scale = op.noise_scale(grid)
    draw = SeededNoise(seeds, (channels, *grid), device)
    b = len(seeds)

    def fresh() -> Tensor:
        with torch.autocast(device_type=device.type, enabled=False):
            return op.apply(draw() * scale)

    def denoise(x: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        lam_b = lam.expand(b).to(device=device, dtype=torch.float32)
        y0, n = process.to_y0_noise(fn(x, lam_b), x, lam_b)
        if clip not in (None, "none"):
            y0 = clip_x0(y0, clip)
            a, s = alpha_sigma(lam_b)
            n = (x - a.view(-1, 1, 1, 1) * y0) / s.view(-1, 1, 1, 1)
        return y0, n

    if spacing == "auto":
        spacing = "logsnr" if sampler == "dpmpp_2m" else "time"
    if logsnrs is not None:
        lams = torch.as_tensor(logsnrs, dtype=torch.float32).detach().cpu().flatten()
        if lams.numel() < 2 or not bool(torch.isfinite(lams).all()):
            raise ValueError(f"logsnrs must hold at least 2 finite noise levels, got {lams.numel()}")
        steps = lams.numel() - 1
    elif spacing == "time":
        ts = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        lams = process.schedule.logsnr(ts, grid).to(torch.float32)
    elif spacing == "logsnr":
        sch = process.schedule
        lams = torch.linspace(sch.logsnr_min(grid), sch.logsnr_max(grid), steps + 1).to(torch.float32)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected 'time' or 'logsnr'")
    if x_init is None:
        x = fresh()
    else:
        if tuple(x_init.shape) != (b, channels, *grid):
            raise ValueError(f"x_init must have shape {(b, channels, *grid)}, got {tuple(x_init.shape)}")
        x = x_init.to(device=device, dtype=torch.float32)
    prev_y0, prev_h = None, None
    for i in tqdm(range(steps), disable=not progress, desc=f"{sampler} {grid[0]}x{grid[1]}", leave=False):
        lt, ls = lams[i], lams[i + 1]
        a_t, s_t = alpha_sigma(lt)
        a_s, s_s = alpha_sigma(ls)
        x_prev = x
        if ls < lt:  # forward jump q(x_s | x_t) to more noise (RePaint resampling)
            ratio = a_s / a_t
            x = ratio * x + torch.sqrt((s_s**2 - ratio**2 * s_t**2).clamp(min=0)) * fresh()
            prev_y0, prev_h = None, None
            if callback is not None:
                new = callback(StepInfo(i, x, x_prev, lt, ls, None, fresh))
                x = x if new is None else new
            continue
        one_minus_r = -torch.expm1(lt - ls)
        y0, n_hat = denoise(x, lt)
        if sampler == "ddpm":
            mean = (1.0 - one_minus_r) * (a_s / a_t) * x + one_minus_r * a_s * y0
            g = variance_interp
            logv = g * torch.log(one_minus_r * s_t**2) + (1 - g) * torch.log(one_minus_r * s_s**2)
            x = mean + torch.exp(0.5 * logv) * fresh()
        elif sampler == "ddim":
            var_eta = eta**2 * one_minus_r * s_s**2
            x = a_s * y0 + torch.sqrt((s_s**2 - var_eta).clamp(min=0)) * n_hat
            if eta > 0:
                x = x + torch.sqrt(var_eta) * fresh()
        else:
            h = 0.5 * (ls - lt)
            d = y0
            if prev_y0 is not None and not (i == steps - 1 and steps < 15):
                # second order except on the first step and, for short runs, the last one
                # (DPM-Solver++'s lower_order_final: the last, longest step is unstable)
                q = prev_h / h
                d = (1.0 + 0.5 / q) * y0 - (0.5 / q) * prev_y0
            x = (s_s / s_t) * x - a_s * torch.expm1(-h) * d
            prev_y0, prev_h = y0, h
        if callback is not None:
            new = callback(StepInfo(i, x, x_prev, lt, ls, y0, fresh))
            x = x if new is None else new
    y0, _ = denoise(x, lams[-1])
    return y0
