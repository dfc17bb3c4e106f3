"""Where training spends its examples: the distribution ``p(lambda)`` of training noise levels.

A loss weighting (:mod:`lightning_infdiff.losses`) multiplies each example's error; the noise-level
distribution decides how often each logSNR is drawn. Only their product matters for the expected
loss, ``p(lambda) w(lambda)`` (Kingma & Gao 2023, eq. 5: the effective weighting), which
:func:`effective_weighting` returns and ``infdiff report`` plots.

* :class:`UniformTime` -- ``t ~ U(0, 1)`` through the process's schedule (DDPM, simple diffusion, ∞-Diff).
* :class:`LogitNormalTime` -- flow matching's logit-normal times (Esser et al. 2024, eq. 19):
  ``t = sigmoid(u)``, ``u ~ N(m, s)`` on the linear path, where ``lambda = 2 log((1 - t)/t) = -2u``.
* :class:`LogNormalSigma` -- EDM's ``ln sigma ~ N(P_mean, P_std)`` (Karras et al. 2022, table 1),
  ``lambda = -2 ln sigma``.

The two normal ones are normal in logSNR; they are clipped to the schedule's range on the grid.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from .schedules import Schedule

__all__ = ["NoiseLevels", "UniformTime", "NormalLogSNR", "LogitNormalTime", "LogNormalSigma", "effective_weighting"]


class NoiseLevels(ABC):
    """A distribution of training logSNRs on a grid."""

    @abstractmethod
    def sample(
        self, batch: int, schedule: Schedule, grid: tuple[int, int], generator: torch.Generator | None = None
    ) -> Tensor:
        """``batch`` logSNRs (float64, on the generator's device or CPU)."""

    @abstractmethod
    def density(self, logsnr: Tensor, schedule: Schedule, grid: tuple[int, int]) -> Tensor:
        """The density ``p(lambda)`` at ``logsnr`` (float64)."""


class UniformTime(NoiseLevels):
    """``t ~ U(0, 1)``, ``lambda = lambda(t)`` of the schedule: ``p(lambda) = |dt / dlambda|``."""

    def sample(
        self, batch: int, schedule: Schedule, grid: tuple[int, int], generator: torch.Generator | None = None
    ) -> Tensor:
        t = torch.rand(batch, generator=generator, dtype=torch.float64, device=generator.device if generator else None)
        return schedule.logsnr(t, grid).to(torch.float64)

    def density(self, logsnr: Tensor, schedule: Schedule, grid: tuple[int, int]) -> Tensor:
        lam = logsnr.to(torch.float64)
        eps = 1e-3
        dt = schedule.t_of_logsnr(lam + eps, grid).double() - schedule.t_of_logsnr(lam - eps, grid).double()
        return (dt / (2 * eps)).abs()

    def __repr__(self) -> str:
        return "UniformTime()"


class NormalLogSNR(NoiseLevels):
    """``lambda ~ N(mean, std)``, clipped to the schedule's ``[lambda_min, lambda_max]`` on the grid.

    Args:
        mean: mean logSNR.
        std: standard deviation in logSNR (> 0).
    """

    def __init__(self, mean: float = 0.0, std: float = 2.0) -> None:
        if not std > 0:
            raise ValueError(f"the noise-level std must be positive, got {std}")
        self.mean, self.std = float(mean), float(std)

    def sample(
        self, batch: int, schedule: Schedule, grid: tuple[int, int], generator: torch.Generator | None = None
    ) -> Tensor:
        z = torch.randn(batch, generator=generator, dtype=torch.float64, device=generator.device if generator else None)
        return (self.mean + self.std * z).clamp(schedule.logsnr_min(grid), schedule.logsnr_max(grid))

    def density(self, logsnr: Tensor, schedule: Schedule, grid: tuple[int, int]) -> Tensor:
        z = (logsnr.to(torch.float64) - self.mean) / self.std
        return torch.exp(-0.5 * z**2) / (self.std * math.sqrt(2 * math.pi))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class LogitNormalTime(NormalLogSNR):
    """Flow matching's logit-normal times: ``t = sigmoid(u)``, ``u ~ N(m, s)``, so ``lambda ~ N(-2m, 2s)``.

    Args:
        m: location of ``u`` (Esser et al. 2024 use 0).
        s: scale of ``u`` (Esser et al. 2024 use 1).
    """

    def __init__(self, m: float = 0.0, s: float = 1.0) -> None:
        super().__init__(-2.0 * m, 2.0 * s)
        self.m, self.s = float(m), float(s)

    def __repr__(self) -> str:
        return f"LogitNormalTime(m={self.m}, s={self.s})"


class LogNormalSigma(NormalLogSNR):
    """EDM's ``ln sigma ~ N(P_mean, P_std)`` with ``sigma = sigma_t / alpha_t``, so ``lambda ~ N(-2 P_mean, 2 P_std)``.

    Args:
        p_mean: mean of ``ln sigma`` (EDM: -1.2).
        p_std: standard deviation of ``ln sigma`` (EDM: 1.2).
    """

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2) -> None:
        super().__init__(-2.0 * p_mean, 2.0 * p_std)
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def __repr__(self) -> str:
        return f"LogNormalSigma(p_mean={self.p_mean}, p_std={self.p_std})"


def effective_weighting(process: object, logsnr: Tensor, grid: tuple[int, int]) -> Tensor:
    """``p(lambda) w_eps(lambda)``: how much the expected loss weighs each logSNR, on the epsilon-MSE
    scale (Kingma & Gao 2023, eq. 5), for any process's noise levels, parametrisation and weighting.

    ``w_eps = w(lambda) x0_mse_factor(lambda) / SNR``: the weight on the target MSE, converted to the
    MSE of the noise estimate (``|n_hat - n|^2 = SNR |y0_hat - y0|^2``).
    """
    lam = logsnr.to(torch.float64)
    w_target = process.weighting(lam.float(), process.param).double()
    w_eps = w_target * process.param.x0_mse_factor(lam.float()).double() / torch.exp(lam)
    return process.noise_levels.density(lam, process.schedule, grid) * w_eps
