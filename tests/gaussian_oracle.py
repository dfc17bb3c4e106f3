"""The exact posterior-mean denoiser for Gaussian data, used to test samplers in closed form.

Data ``x0 ~ N(mu, s^2 I)`` per pixel. Under the process ``x_t = alpha T x0 + sigma c T xi`` both
``y0 = T x0`` and ``n = c T xi`` have covariances proportional to ``T T*`` (``s^2`` and ``c^2``),
so the posterior mean is a scalar gain:
``E[y0 | x_t] = T mu + alpha s^2 / (alpha^2 s^2 + sigma^2 c^2) (x_t - alpha T mu)``.
The oracle returns whatever the process's parametrisation asks for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_infdiff.processes import GaussianProcess
from lightning_infdiff.schedules import alpha_sigma


def oracle_model_fn(process: GaussianProcess, mu: float, s: float, grid: tuple[int, int]):
    c = process.operator.noise_scale(grid)

    def fn(x: Tensor, logsnr: Tensor) -> Tensor:
        a, sg = (v.view(-1, 1, 1, 1) for v in alpha_sigma(logsnr.double()))
        x = x.double()
        tmu = torch.full_like(x, mu)  # T preserves constants
        gain = a * s**2 / (a**2 * s**2 + sg**2 * c**2)
        y0 = tmu + gain * (x - a * tmu)
        n = (x - a * y0) / sg
        return process.param.from_y0_noise(y0, n, logsnr.double(), process.operator).float()

    return fn


def expected_pixel_std(process: GaussianProcess, s: float, grid: tuple[int, int]) -> Tensor:
    """Per-pixel std of ``T x0``: ``s sqrt(diag(T T*))`` (computed from impulses)."""
    h, w = grid
    eye = torch.eye(h * w, dtype=torch.float64).reshape(h * w, h, w)
    t_rows = process.operator.apply(eye).reshape(h * w, h * w)
    return s * (t_rows**2).sum(0).sqrt().reshape(h, w)


def field_spectrum(grid: tuple[int, int], s: float, length: float) -> Tensor:
    """DCT variances ``(H, W)`` of a resolution-free Gaussian field: on every grid the orthonormal
    DCT coefficient of mode ``(k_y, k_x)`` (the continuous ``cos(pi k_y y) cos(pi k_x x)``) has
    variance ``H W s^2 exp(-(pi length)^2 (k_y^2 + k_x^2))``, so a finer grid samples the same
    field more densely (pointwise variance about ``s^2 / (4 pi length^2)`` once the grid resolves it)."""
    h, w = grid
    ky = torch.arange(h, dtype=torch.float64)[:, None]
    kx = torch.arange(w, dtype=torch.float64)[None, :]
    return h * w * s**2 * torch.exp(-((torch.pi * length) ** 2) * (ky**2 + kx**2))


def _dct2(x: Tensor) -> Tensor:
    from lightning_infdiff.operators import dct_matrix

    h, w = x.shape[-2:]
    return dct_matrix(h, x.device) @ x @ dct_matrix(w, x.device).T


def _idct2(c: Tensor) -> Tensor:
    from lightning_infdiff.operators import dct_matrix

    h, w = c.shape[-2:]
    return dct_matrix(h, c.device).T @ c @ dct_matrix(w, c.device)


def field_oracle_model_fn(process: GaussianProcess, mu: float, spectrum: Tensor, grid: tuple[int, int]):
    """Exact posterior-mean denoiser for ``x0 = mu + field`` with DCT variances ``spectrum (H, W)``
    and a DCT-diagonal operator ``T`` (identity or heat kernel): per mode,
    ``E[y0_k | x_t] = T_k mu_k + alpha S_k / (alpha^2 S_k + sigma^2 c^2) (x_t - alpha T mu)_k``."""
    c = process.operator.noise_scale(grid)
    spec = spectrum.double()

    def fn(x: Tensor, logsnr: Tensor) -> Tensor:
        a, sg = (v.view(-1, 1, 1, 1) for v in alpha_sigma(logsnr.double()))
        x = x.double()
        gain = a * spec / (a**2 * spec + sg**2 * c**2)
        y0 = mu + _idct2(gain * _dct2(x - a * mu))
        n = (x - a * y0) / sg
        return process.param.from_y0_noise(y0, n, logsnr.double(), process.operator).float()

    return fn


def expected_mode_power(process: GaussianProcess, spectrum: Tensor, grid: tuple[int, int]) -> Tensor:
    """DCT variances of ``T x0``: ``T_k^2 S_k`` (``T_k`` the operator's multipliers, 1 for plain diffusion)."""
    m = process.operator.multipliers(grid) if hasattr(process.operator, "multipliers") else torch.ones(grid)
    return m.double() ** 2 * spectrum.double()


def mode_power(samples: Tensor, mu: float) -> Tensor:
    """Empirical DCT variances ``(H, W)`` of samples ``(B, 1, H, W)`` around ``mu``."""
    return _dct2((samples.double() - mu)[:, 0]).pow(2).mean(0)


def field_denoise(mu: float, spectrum: Tensor, c: float = 1.0):
    """The exact denoiser in the samplers' form ``(x, logsnr 0-dim) -> (y0_hat, n_hat)`` (float64)
    for ``x0 = mu + field`` with DCT variances ``spectrum`` and noise ``c T xi`` (see
    :func:`field_oracle_model_fn`; ``T`` cancels from the gain), for the sampler functions."""
    spec = spectrum.double()

    def model(x: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
        a, sg = alpha_sigma(logsnr.double())
        x = x.double()
        y0 = mu + _idct2(a * spec / (a**2 * spec + sg**2 * c**2) * _dct2(x - a * mu))
        return y0, (x - a * y0) / sg

    return model


def field_flow(x: Tensor, logsnr_from: float, logsnr_to: float, mu: float, spectrum: Tensor, c: float = 1.0) -> Tensor:
    """The exact probability-flow ODE map of the VP state from ``logsnr_from`` to ``logsnr_to`` for
    the field of :func:`field_denoise`. In EDM's variables ``x_e = x / alpha``,
    ``sigma_e = exp(-lambda / 2)`` the ODE ``dx_e / dsigma_e = (x_e - D) / sigma_e`` is, per DCT mode,
    ``d(x_e - mu)_k / dsigma_e = c^2 sigma_e / (S_k + c^2 sigma_e^2) (x_e - mu)_k``, so
    ``(x_e - mu)_k`` scales by ``sqrt((S_k + c^2 sigma_to^2) / (S_k + c^2 sigma_from^2))``."""
    spec = spectrum.double()
    lf, lt = torch.tensor(float(logsnr_from), dtype=torch.float64), torch.tensor(float(logsnr_to), dtype=torch.float64)
    a_f, a_t = alpha_sigma(lf)[0], alpha_sigma(lt)[0]
    s2_f, s2_t = torch.exp(-lf), torch.exp(-lt)
    gain = torch.sqrt((spec + c**2 * s2_t) / (spec + c**2 * s2_f))
    return a_t * (mu + _idct2(gain * _dct2(x.double() / a_f - mu)))
