"""Samplers as a family: one function per algorithm, one signature, and :func:`sample` on top.

Every sampler function has the signature (k-diffusion style, Crowson 2022)::

    sample_<name>(model, x, logsnrs, noise, callback=None, **options) -> x at logsnrs[-1]

* ``model(x, logsnr) -> (y0_hat, n_hat)`` is the process's denoiser on the variance-preserving
  state (clipping included): ``y0_hat`` estimates the clean signal ``T x0`` and
  ``n_hat = (x - alpha y0_hat) / sigma`` the noise ``c T xi``; ``logsnr`` is a 0-dim tensor.
* ``x`` is the start state at ``logsnrs[0]`` in the toolkit's form ``x = alpha y0 + sigma n``
  (``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)``), of any shape (images, vectors).
* ``logsnrs`` is the increasing noise-level grid ``lambda_0 < ... < lambda_K``; coefficients are
  computed in its dtype (float32 for :func:`sample`, float64 for the latent prior).
* ``noise()`` draws fresh noise ``n`` shaped like ``x`` (mollified ``c T xi`` from the per-sample
  seeded streams in :func:`sample`); deterministic samplers never call it.
* ``callback(StepInfo)`` sees every step and may return a replacement state.

The functions return the state at ``lambda_K``; :func:`sample` then returns the denoised estimate
``T x0_hat`` at ``lambda_K`` (simple diffusion, appendix A). With ``r = SNR_t / SNR_s`` and the
posterior ``q(x_s | x_t, y0)`` of :func:`lightning_infdiff.processes.posterior` (the one copy of
its coefficients), for a step ``t -> s`` (``lambda_s > lambda_t``):

* ``ddpm`` (ancestral): ``x_s = coef_xt x_t + coef_y0 y0_hat + sqrt(v) n`` with the posterior's
  mean and ``v`` its variance interpolated in log space (``variance_interp``).
* ``ddim`` (``eta``): ``x_s = alpha_s y0_hat + sqrt(sigma_s^2 - eta^2 v) n_hat + eta sqrt(v) n``.
* ``dpmpp_2m``: DPM-Solver++(2M), second-order multistep in the data prediction.
* ``euler``: Euler on the probability-flow ODE in EDM's variables (equals ``ddim`` with ``eta=0``).
* ``heun``: EDM's second-order sampler with optional churn (Karras et al. 2022, alg. 2).
* ``dpmpp_3m``: third-order multistep exponential integrator in the data prediction.

EDM's variables: ``sigma_e = sigma / alpha = exp(-lambda / 2)`` and ``x_e = x / alpha = y0 + sigma_e n``;
the probability-flow ODE is ``dx_e / dsigma_e = (x_e - D) / sigma_e = n_hat`` with ``D = y0_hat``,
and in ``tau = -log sigma_e = lambda / 2`` it is ``dx_e / dtau = D - x_e``, whose exact solution
over ``h = tau_s - tau_t`` is ``x_e(tau_s) = e^{-h} x_e(tau_t) + int_{tau_t}^{tau_s} e^{-(tau_s - tau)} D(tau) dtau``
(the exponential-integrator form the DPM-Solver++ functions discretise).

:func:`sample` draws noise per sample from its own seed, so sample ``i`` depends only on
``seeds[i]`` (not on the batch size or the number of processes); state and coefficients are
float32 (the update maths are elementwise, never autocast). Two hooks let applications
(inpainting, super-resolution; :mod:`lightning_infdiff.applications`) reuse the steps: ``logsnrs``
gives the noise levels explicitly, and a fall in the grid (``lambda_{i+1} < lambda_i``) is a
*forward* jump ``x_s = (alpha_s/alpha_t) x_t + sqrt(sigma_s^2 - (alpha_s/alpha_t)^2 sigma_t^2) n``
(RePaint's resampling, Lugmayr et al. 2022, eq. 8 in logSNR form) between increasing runs that
each sampler walks afresh; ``callback`` sees every transition (:class:`StepInfo`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .coords import as_grid, check_grid, full_coords
from .processes import GaussianProcess, posterior
from .schedules import alpha_sigma

__all__ = [
    "SeededNoise", "StepInfo", "make_model_fn", "rescale_guidance", "clip_x0", "sample", "SAMPLERS",
    "sample_ddpm", "sample_ddim", "sample_dpmpp_2m", "sample_euler", "sample_heun", "sample_dpmpp_3m",
]

#: network output on the full grid: ``f(x (B, C, H, W), logsnr (B,)) -> (B, C_out, H, W)``
ModelFn = Callable[[Tensor, Tensor], Tensor]
#: the denoiser the sampler functions call: ``(x, logsnr 0-dim) -> (y0_hat, n_hat)``
Denoise = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor]"]
#: fresh noise shaped like the state
Noise = Callable[[], Tensor]


@dataclass
class StepInfo:
    """One transition of a sampler, handed to its ``callback``.

    Attributes:
        index: transition number ``i`` (0-based; :func:`sample` counts over its whole grid).
        x: the new state at ``logsnr_to``.
        x_prev: the state at ``logsnr_from`` the transition started from.
        logsnr_from: ``lambda_i`` (0-dim tensor).
        logsnr_to: ``lambda_{i+1}``; smaller than ``logsnr_from`` for a forward (re-noising) jump.
        y0: the clean estimate ``T x0_hat`` at the start of a denoising step; ``None`` for a forward jump.
        noise: draws fresh noise (mollified ``c T xi`` from the per-sample seeded streams in :func:`sample`).
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


def rescale_guidance(guided: Tensor, cond: Tensor, phi: float) -> Tensor:
    """Guidance rescale (Lin et al. 2024, "Common diffusion noise schedules and sample steps are
    flawed", eqs. 15-16): ``x_rs = x_cfg std(x_pos) / std(x_cfg)`` and ``phi x_rs + (1 - phi) x_cfg``,
    the standard deviations per sample over all its other dimensions. ``phi = 0`` is plain guidance,
    ``phi = 1`` gives the guided prediction the conditional prediction's standard deviation."""
    if phi == 0.0:
        return guided
    dims = tuple(range(1, guided.dim()))
    ratio = cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True).clamp(min=1e-12)
    return phi * (guided * ratio) + (1.0 - phi) * guided


def make_model_fn(
    denoiser: Callable[..., Tensor],
    grid: tuple[int, int],
    cond: Tensor | None = None,
    guidance_scale: float = 1.0,
    null_cond: Tensor | None = None,
    process: GaussianProcess | None = None,
    guidance_interval: Sequence[float] | None = None,
    guidance_rescale: float = 0.0,
) -> ModelFn:
    """Wrap a denoiser as ``f(x (B, C, H, W), logsnr (B,)) -> (B, C_out, H, W)`` on the full grid.

    ``x`` is the variance-preserving state; the network sees ``process.net_input(x, logsnr)``
    (the parametrisation's input scale, 1 unless flow matching or EDM say otherwise).

    Classifier-free guidance (Ho & Salimans 2022; simple diffusion eq. 7):
    ``out = out_null + w (out_cond - out_null)``, with ``w = guidance_scale`` (1 = conditional
    only), on the network's output (whatever the parametrisation predicts). Both branches run as
    one batch. ``null_cond`` defaults to the denoiser's ``null_class`` when it has one.

    ``guidance_interval = (lo, hi)`` applies guidance only at logSNR in ``[lo, hi]`` and returns
    the conditional output elsewhere, without running the null branch there (Kynkäänniemi et al.
    2024, "Applying guidance in a limited interval improves sample and distribution quality").
    ``guidance_rescale = phi`` in ``[0, 1]`` rescales the guided output (:func:`rescale_guidance`).
    """
    grid = as_grid(grid)
    h, w = grid
    guided = cond is not None and guidance_scale != 1.0
    if guided and null_cond is None:
        null = getattr(denoiser, "null_class", None)
        if null is None:
            raise ValueError("classifier-free guidance needs a null condition: pass null_cond or use a class-conditional denoiser")
        null_cond = torch.full_like(cond, int(null))
    interval = None
    if guidance_interval is not None:
        if len(guidance_interval) != 2 or not float(guidance_interval[0]) <= float(guidance_interval[1]):
            raise ValueError(f"guidance_interval must be (lo, hi) with lo <= hi, got {guidance_interval!r}")
        interval = (float(guidance_interval[0]), float(guidance_interval[1]))
    if not 0.0 <= guidance_rescale <= 1.0:
        raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")

    def fn(x: Tensor, logsnr: Tensor) -> Tensor:
        if process is not None:
            x = process.net_input(x, logsnr)
        b, c = x.shape[:2]
        values = x.reshape(b, c, h * w).transpose(1, 2)
        coords = full_coords(b, grid, x.device)
        inside = None
        if guided and interval is not None:
            inside = (logsnr >= interval[0]) & (logsnr <= interval[1])
        if guided and (inside is None or bool(inside.any())):
            out = denoiser(
                torch.cat([values, values]), torch.cat([coords, coords]), torch.cat([logsnr, logsnr]),
                grid, torch.cat([cond, null_cond]),
            ).float()
            out_c, out_u = out.chunk(2)
            out = rescale_guidance(out_u + guidance_scale * (out_c - out_u), out_c, guidance_rescale)
            if inside is not None:
                out = torch.where(inside.view(-1, 1, 1), out, out_c)
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


# ---------------------------------------------------------------------------------------------
# the sampler family: sample_<name>(model, x, logsnrs, noise, callback=None, **options) -> x
# ---------------------------------------------------------------------------------------------


def _after_step(
    callback: StepCallback | None, i: int, x: Tensor, x_prev: Tensor, lt: Tensor, ls: Tensor, y0: Tensor | None,
    noise: Noise,
) -> Tensor:
    if callback is None:
        return x
    new = callback(StepInfo(i, x, x_prev, lt, ls, y0, noise))
    return x if new is None else new


def edm_sigma(logsnr: Tensor) -> Tensor:
    """EDM's noise level ``sigma_e = sigma / alpha = exp(-lambda / 2)`` of a VP logSNR."""
    return torch.exp(-0.5 * logsnr)


@torch.no_grad()
def sample_ddpm(
    model: Denoise, x: Tensor, logsnrs: Tensor, noise: Noise, callback: StepCallback | None = None, *,
    variance_interp: float = 0.0,
) -> Tensor:
    """Ancestral sampling (Ho et al. 2020; simple diffusion, appendix A): draw from the posterior
    ``q(x_s | x_t, y0 = y0_hat)``::

        x_s = coef_xt x_t + coef_y0 y0_hat + sqrt(v) n,    log v = g log beta + (1 - g) log beta_tilde

    with ``coef_xt = r alpha_s / alpha_t``, ``coef_y0 = (1 - r) alpha_s``, ``beta_tilde = (1 - r) sigma_s^2``
    and ``beta = (1 - r) sigma_t^2`` (:func:`~lightning_infdiff.processes.posterior`; ∞-Diff eq. 10),
    ``g = variance_interp`` (simple diffusion uses 0.2). First order.
    """
    for i in range(len(logsnrs) - 1):
        lt, ls = logsnrs[i], logsnrs[i + 1]
        y0, _ = model(x, lt)
        coef_y0, coef_xt, var = posterior(lt, ls, variance_interp)
        x_prev = x
        x = coef_xt * x + coef_y0 * y0 + var.sqrt() * noise()
        x = _after_step(callback, i, x, x_prev, lt, ls, y0, noise)
    return x


@torch.no_grad()
def sample_ddim(
    model: Denoise, x: Tensor, logsnrs: Tensor, noise: Noise, callback: StepCallback | None = None, *,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12; ∞-Diff eq. 6)::

        x_s = alpha_s y0_hat + sqrt(sigma_s^2 - eta^2 beta_tilde) n_hat + eta sqrt(beta_tilde) n

    with ``beta_tilde`` the posterior variance (:func:`~lightning_infdiff.processes.posterior`).
    ``eta = 0`` is deterministic (the probability-flow ODE's first-order solver, equal to
    :func:`sample_euler`), ``eta = 1`` has DDPM's posterior variance. First order.
    """
    for i in range(len(logsnrs) - 1):
        lt, ls = logsnrs[i], logsnrs[i + 1]
        y0, n_hat = model(x, lt)
        a_s, s_s = alpha_sigma(ls)
        x_prev = x
        if eta == 0:
            x = a_s * y0 + s_s * n_hat
        else:
            var = eta**2 * posterior(lt, ls)[2]
            x = a_s * y0 + torch.sqrt((s_s**2 - var).clamp(min=0)) * n_hat
            x = x + torch.sqrt(var) * noise()
        x = _after_step(callback, i, x, x_prev, lt, ls, y0, noise)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Denoise, x: Tensor, logsnrs: Tensor, noise: Noise, callback: StepCallback | None = None, *,
    lower_order_final: bool | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, alg. 2), with ``h = (lambda_s - lambda_t) / 2``::

        x_s = (sigma_s / sigma_t) x_t - alpha_s expm1(-h) D

    where ``D = y0_hat`` on the first step and ``D = (1 + 1/(2q)) y0_hat - y0_prev / (2q)``,
    ``q = h_prev / h``, afterwards. ``lower_order_final`` (default: when the grid has fewer than
    15 steps) takes the last step at first order, as DPM-Solver++ does: the last, longest step of
    a short run extrapolates badly. Deterministic; second order.
    """
    steps = len(logsnrs) - 1
    if lower_order_final is None:
        lower_order_final = steps < 15
    prev_y0, prev_h = None, None
    for i in range(steps):
        lt, ls = logsnrs[i], logsnrs[i + 1]
        _, s_t = alpha_sigma(lt)
        a_s, s_s = alpha_sigma(ls)
        y0, _ = model(x, lt)
        h = 0.5 * (ls - lt)
        d = y0
        if prev_y0 is not None and not (lower_order_final and i == steps - 1):
            q = prev_h / h
            d = (1.0 + 0.5 / q) * y0 - (0.5 / q) * prev_y0
        x_prev = x
        x = (s_s / s_t) * x - a_s * torch.expm1(-h) * d
        prev_y0, prev_h = y0, h
        x = _after_step(callback, i, x, x_prev, lt, ls, y0, noise)
    return x


@torch.no_grad()
def sample_euler(model: Denoise, x: Tensor, logsnrs: Tensor, noise: Noise, callback: StepCallback | None = None) -> Tensor:
    """Euler's method on the probability-flow ODE in EDM's variables (Karras et al. 2022, eq. 4
    and alg. 1 without the correction)::

        x_e = x / alpha,    x_e' = x_e + (sigma_e' - sigma_e) n_hat,    x' = alpha' x_e'

    with ``sigma_e = exp(-lambda / 2)`` and ``n_hat = (x_e - y0_hat) / sigma_e`` the ODE's slope.
    Since ``x_e = y0_hat + sigma_e n_hat``, this is ``x' = alpha' y0_hat + sigma' n_hat``:
    deterministic DDIM, step for step (so also flow matching's Euler sampler, a change of
    variables of this one). Deterministic; first order.
    """
    for i in range(len(logsnrs) - 1):
        lt, ls = logsnrs[i], logsnrs[i + 1]
        a_t, _ = alpha_sigma(lt)
        a_s, _ = alpha_sigma(ls)
        y0, n_hat = model(x, lt)
        x_prev = x
        x = a_s * (x / a_t + (edm_sigma(ls) - edm_sigma(lt)) * n_hat)
        x = _after_step(callback, i, x, x_prev, lt, ls, y0, noise)
    return x


@torch.no_grad()
def sample_heun(
    model: Denoise, x: Tensor, logsnrs: Tensor, noise: Noise, callback: StepCallback | None = None, *,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
) -> Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, alg. 2), in EDM's variables
    ``sigma_e = exp(-lambda / 2)``, ``x_e = x / alpha``, with ``K`` steps::

        gamma = min(s_churn / K, sqrt(2) - 1) if s_tmin <= sigma_e <= s_tmax else 0
        sigma_hat = (1 + gamma) sigma_e,    x_hat = x_e + s_noise sqrt(sigma_hat^2 - sigma_e^2) n
        d = n_hat(x_hat, sigma_hat),        x_e' = x_hat + (sigma_e' - sigma_hat) d          (Euler)
        d' = n_hat(x_e', sigma_e'),         x_e' = x_hat + (sigma_e' - sigma_hat) (d + d') / 2 (Heun)

    ``s_tmin`` and ``s_tmax`` are EDM noise levels ``sigma_e``. Two network evaluations per step (the
    grid never reaches ``sigma_e = 0``, where EDM skips the correction). ``s_churn = 0`` is
    deterministic and second order.
    """
    steps = len(logsnrs) - 1
    for i in range(steps):
        lt, ls = logsnrs[i], logsnrs[i + 1]
        a_t, _ = alpha_sigma(lt)
        a_s, _ = alpha_sigma(ls)
        sig_t, sig_s = edm_sigma(lt), edm_sigma(ls)
        gamma = min(s_churn / steps, math.sqrt(2.0) - 1.0) if s_tmin <= float(sig_t) <= s_tmax else 0.0
        x_e = x / a_t
        if gamma > 0:
            sig_hat = sig_t * (1.0 + gamma)
            lam_hat = -2.0 * torch.log(sig_hat)
            x_e = x_e + s_noise * torch.sqrt(sig_hat**2 - sig_t**2) * noise()
            x_hat = alpha_sigma(lam_hat)[0] * x_e
        else:
            sig_hat, lam_hat, x_hat = sig_t, lt, x
        y0, d = model(x_hat, lam_hat)
        x_euler = x_e + (sig_s - sig_hat) * d
        _, d_next = model(a_s * x_euler, ls)
        x_prev = x
        x = a_s * (x_e + (sig_s - sig_hat) * (0.5 * (d + d_next)))
        x = _after_step(callback, i, x, x_prev, lt, ls, y0, noise)
    return x


@torch.no_grad()
def sample_dpmpp_3m(
    model: Denoise, x: Tensor, logsnrs: Tensor, noise: Noise, callback: StepCallback | None = None, *,
    lower_order_final: bool | None = None,
) -> Tensor:
    """Third-order multistep exponential integrator in the data prediction (DPM-Solver++(3M),
    Lu et al. 2022, in the form derived here).

    With ``tau = lambda / 2`` and ``h = tau_s - tau_t``, the ODE ``dx_e / dtau = D - x_e`` gives
    ``x_e(tau_s) = e^{-h} x_e(tau_t) + int_0^h e^{-(h - u)} D(tau_t + u) du``. A Taylor expansion
    ``D(tau_t + u) = D + u D' + u^2 / 2 D''`` integrates to ``phi_0 D + phi_1 D' + phi_2 D''`` with
    ``phi_0 = 1 - e^{-h}``, ``phi_1 = h - phi_0`` and ``phi_2 = h^2 / 2 - phi_1``; ``D'`` and ``D''``
    come from the Newton polynomial through the last three estimates ``D_0, D_1, D_2`` at
    ``tau_t, tau_t - h_1, tau_t - h_1 - h_2``: with the divided differences
    ``d_1 = (D_0 - D_1) / h_1``, ``d_1' = (D_1 - D_2) / h_2``, ``d_2 = (d_1 - d_1') / (h_1 + h_2)``,
    ``D' = d_1 + h_1 d_2`` and ``D'' = 2 d_2``. Back in the VP state::

        x_s = (sigma_s / sigma_t) x_t + alpha_s (phi_0 D_0 + phi_1 D' + phi_2 D'')

    The first step is first order (``D' = D'' = 0``), the second second order (``D' = d_1``,
    ``D'' = 0``). ``lower_order_final`` (default: fewer than 15 steps) lowers the order of the
    last two steps to 2 and 1, as DPM-Solver does. Deterministic; third order.
    """
    steps = len(logsnrs) - 1
    if lower_order_final is None:
        lower_order_final = steps < 15
    hist: list[tuple[Tensor, Tensor]] = []  # (D, h of the step that followed it), newest first
    for i in range(steps):
        lt, ls = logsnrs[i], logsnrs[i + 1]
        _, s_t = alpha_sigma(lt)
        a_s, s_s = alpha_sigma(ls)
        y0, _ = model(x, lt)
        h = 0.5 * (ls - lt)
        order = min(3, len(hist) + 1)
        if lower_order_final:
            order = min(order, steps - i)
        phi0 = -torch.expm1(-h)
        phi1 = h - phi0
        phi2 = 0.5 * h * h - phi1
        d = phi0 * y0
        if order >= 2:
            (y1, h1) = hist[0]
            d1 = (y0 - y1) / h1
            if order == 3:
                (y2, h2) = hist[1]
                d2 = (d1 - (y1 - y2) / h2) / (h1 + h2)
                d = d + phi1 * (d1 + h1 * d2) + phi2 * (2.0 * d2)
            else:
                d = d + phi1 * d1
        x_prev = x
        x = (s_s / s_t) * x + a_s * d
        hist = [(y0, h), *hist[:1]]
        x = _after_step(callback, i, x, x_prev, lt, ls, y0, noise)
    return x


#: name -> sampler function (all with the signature of :func:`sample_euler` plus keyword options)
SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_3m": sample_dpmpp_3m,
}
SamplerName = Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "dpmpp_3m"]
#: the multistep solvers (their last step may drop to first order, ``lower_order_final``)
MULTISTEP = ("dpmpp_2m", "dpmpp_3m")
#: the solvers that walk a grid uniform in logSNR by default (``spacing="auto"``): the higher-order
#: ones, which extrapolate (multistep) or average slopes (Heun) over a step and so need steps of
#: similar length in ``log sigma``
LOGSNR_SPACED = ("dpmpp_2m", "dpmpp_3m", "heun")


@torch.no_grad()
def sample(
    process: GaussianProcess,
    denoiser: Callable[..., Tensor],
    grid: tuple[int, int],
    seeds: Sequence[int],
    channels: int = 3,
    steps: int = 50,
    sampler: SamplerName = "ddim",
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
    guidance_interval: Sequence[float] | None = None,
    guidance_rescale: float = 0.0,
    options: Mapping[str, Any] | None = None,
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
        steps: number of solver steps (network evaluations = steps + 1; ``2 steps + 1`` for ``heun``).
        sampler: a name in :data:`SAMPLERS`: ``ddpm``, ``ddim``, ``dpmpp_2m``, ``euler``, ``heun``
            or ``dpmpp_3m`` (see the functions ``sample_<name>``).
        eta: DDIM stochasticity (0 = deterministic, 1 ~ DDPM posterior variance); ``ddim`` only.
        variance_interp: DDPM log-variance interpolation ``g`` (simple diffusion uses 0.2); ``ddpm`` only.
        clip: x0 clipping: ``none``, ``static`` or ``dynamic``.
        cond: optional condition ``(B,)``; ``guidance_scale``/``null_cond`` for CFG.
        device: where to run (defaults to the denoiser's parameters' device, else CPU).
        progress: show a progress bar.
        model_fn: advanced: a ready ``f(x, logsnr)`` replacing ``denoiser`` (e.g. exact denoisers in tests).
        spacing: ``time`` = steps uniform in ``t`` (the schedule decides where effort goes);
            ``logsnr`` = uniform in logSNR between the schedule's ends (DPM-Solver's default);
            ``auto`` = ``logsnr`` for ``dpmpp_2m``, ``dpmpp_3m`` and ``heun``, ``time`` otherwise.
            With the clipped cosine schedule, time spacing makes the end steps long in logSNR,
            which the multistep solvers extrapolate badly (measured in ``tests/test_samplers.py``)
            and Heun's trapezoid gets badly wrong (its first step, ``sigma_e`` 1808 -> 16, draws
            1.9 times the data's variance at 25 steps; ``tests/test_sampler_family.py``).
        logsnrs: explicit noise levels ``lambda_0, ..., lambda_K`` (overrides ``steps`` and
            ``spacing``); a decrease between neighbours is a forward re-noising jump (see the
            module docstring); the sampler starts afresh (multistep history too) after one.
        callback: called after every transition with a :class:`StepInfo`; a returned tensor
            replaces the state (e.g. replacement of known pixels), ``None`` keeps it.
        x_init: start state ``(B, C, H, W)`` at the first noise level (default: fresh noise
            ``c T xi``), e.g. an upsampled state of a coarser grid (:mod:`lightning_infdiff.applications.progressive`).
        guidance_interval: ``(lo, hi)``: guide only at logSNR in ``[lo, hi]`` (see :func:`make_model_fn`).
        guidance_rescale: guidance rescale ``phi`` in ``[0, 1]`` (see :func:`rescale_guidance`).
        options: further keyword options of the sampler function (e.g. ``{"s_churn": 10}`` for ``heun``).
    """
    grid = as_grid(check_grid(grid))
    process = process.at(grid.canvas)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {tuple(SAMPLERS)}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    if len(seeds) == 0:
        raise ValueError("seeds must name at least one sample")
    if device is None:
        p = next(iter(getattr(denoiser, "parameters", lambda: iter(()))()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    if model_fn is not None:
        fn = model_fn
    else:
        fn = make_model_fn(
            denoiser, grid, cond, guidance_scale, null_cond, process, guidance_interval, guidance_rescale
        )
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
        spacing = "logsnr" if sampler in LOGSNR_SPACED else "time"
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
    kwargs: dict[str, Any] = {"ddim": {"eta": eta}, "ddpm": {"variance_interp": variance_interp}}.get(sampler, {})
    kwargs.update(options or {})
    solver = SAMPLERS[sampler]
    bar = tqdm(total=steps, disable=not progress, desc=f"{sampler} {grid[0]}x{grid[1]}", leave=False)

    def shifted(offset: int) -> StepCallback:
        def report(info: StepInfo) -> Tensor | None:
            bar.update(1)
            return None if callback is None else callback(dataclasses.replace(info, index=info.index + offset))

        return report

    i = 0
    while i < steps:
        lt, ls = lams[i], lams[i + 1]
        if ls < lt:  # forward jump q(x_s | x_t) to more noise (RePaint resampling)
            a_t, s_t = alpha_sigma(lt)
            a_s, s_s = alpha_sigma(ls)
            ratio = a_s / a_t
            x_prev = x
            x = ratio * x + torch.sqrt((s_s**2 - ratio**2 * s_t**2).clamp(min=0)) * fresh()
            new = shifted(i)(StepInfo(0, x, x_prev, lt, ls, None, fresh))
            x = x if new is None else new
            i += 1
            continue
        j = i + 1  # the increasing run lams[i..j]
        while j < steps and lams[j + 1] >= lams[j]:
            j += 1
        run = dict(kwargs)
        if sampler in MULTISTEP:  # only the run's last step ends the whole walk
            run.setdefault("lower_order_final", j == steps and steps < 15)
        x = solver(denoise, x, lams[i : j + 1], fresh, shifted(i), **run)
        i = j
    bar.close()
    y0, _ = denoise(x, lams[-1])
    return y0
