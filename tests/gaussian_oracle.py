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
