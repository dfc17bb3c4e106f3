"""Loss weightings over noise levels and the multiscale loss of simple diffusion.

A weighting is specified in *x0 units*: ``w_x0(lambda)`` multiplies the MSE of the clean
estimate. The process divides it by the parametrisation's ``x0_mse_factor`` so that it applies
to the MSE in target space. :class:`UnitWeighting` is the exception: weight 1 on the target
MSE (Ho et al. 2020's "simple" loss, and ∞-Diff eq. 42).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from .parametrisations import Parametrisation

__all__ = [
    "Weighting",
    "UnitWeighting",
    "SNRWeighting",
    "MinSNRWeighting",
    "SigmoidWeighting",
    "EDMWeighting",
    "build_weighting",
    "multiscale_mse",
]


class Weighting(ABC):
    """Per-example loss weight as a function of logSNR."""

    @abstractmethod
    def __call__(self, logsnr: Tensor, param: Parametrisation) -> Tensor:
        """Weight ``(B,)`` on the target-space MSE."""


class UnitWeighting(Weighting):
    """Weight 1 on the target MSE (the "simple" loss)."""

    def __call__(self, logsnr: Tensor, param: Parametrisation) -> Tensor:
        return torch.ones_like(logsnr)

    def __repr__(self) -> str:
        return "UnitWeighting()"


class SNRWeighting(Weighting):
    """``w_x0 = SNR = exp(lambda)``: the epsilon-MSE in x0 units (Kingma et al. 2021 with w = 1)."""

    def __call__(self, logsnr: Tensor, param: Parametrisation) -> Tensor:
        return torch.exp(logsnr) / param.x0_mse_factor(logsnr)

    def __repr__(self) -> str:
        return "SNRWeighting()"


class MinSNRWeighting(Weighting):
    """Min-SNR-gamma (Hang et al. 2023): ``w_x0 = min(SNR, gamma)``.

    For epsilon targets this is ``min(SNR, gamma) / SNR``; for v, ``min(SNR, gamma) / (SNR + 1)``.

    Args:
        gamma: the clamp (paper default 5).
    """

    def __init__(self, gamma: float = 5.0) -> None:
        if not gamma > 0:
            raise ValueError(f"min-SNR gamma must be positive, got {gamma}")
        self.gamma = float(gamma)

    def __call__(self, logsnr: Tensor, param: Parametrisation) -> Tensor:
        snr = torch.exp(logsnr)
        return torch.clamp(snr, max=self.gamma) / param.x0_mse_factor(logsnr)

    def __repr__(self) -> str:
        return f"MinSNRWeighting(gamma={self.gamma})"


class SigmoidWeighting(Weighting):
    """Sigmoid weighting (Kingma & Gao 2023, section 5; simpler diffusion, SiD2):
    ``w_eps = sigmoid(b - lambda)`` on the epsilon-MSE, i.e. ``w_x0 = SNR sigmoid(b - lambda)``.

    It weighs the epsilon-MSE fully at high noise and the x0-MSE by the constant ``e^b`` at low
    noise, switching over around ``lambda = b``.

    Args:
        bias: ``b``, the logSNR where the weight halves.
    """

    def __init__(self, bias: float = 2.0) -> None:
        self.bias = float(bias)

    def __call__(self, logsnr: Tensor, param: Parametrisation) -> Tensor:
        return torch.exp(logsnr) * torch.sigmoid(self.bias - logsnr) / param.x0_mse_factor(logsnr)

    def __repr__(self) -> str:
        return f"SigmoidWeighting(bias={self.bias})"


class EDMWeighting(Weighting):
    """EDM's ``w_x0 = (sigma^2 + s_d^2) / (sigma s_d)^2`` with ``sigma = e^{-lambda/2}`` (Karras et al.
    2022, eq. 8 and table 1): unit weight on the preconditioned network's MSE (``edm`` target).

    Args:
        sigma_data: ``s_d`` (EDM: 0.5).
    """

    def __init__(self, sigma_data: float = 0.5) -> None:
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.sigma_data = float(sigma_data)

    def __call__(self, logsnr: Tensor, param: Parametrisation) -> Tensor:
        sigma2 = torch.exp(-logsnr)
        return (sigma2 + self.sigma_data**2) / (sigma2 * self.sigma_data**2) / param.x0_mse_factor(logsnr)

    def __repr__(self) -> str:
        return f"EDMWeighting(sigma_data={self.sigma_data})"


def build_weighting(name: str | Weighting, **kwargs: float) -> Weighting:
    """A weighting from its name: ``unit``, ``snr``, ``min_snr`` (kwargs: ``gamma``), ``sigmoid``
    (``bias``), ``edm`` (``sigma_data``)."""
    if isinstance(name, Weighting):
        return name
    key = str(name).lower().replace("-", "_")
    table = {"unit": UnitWeighting, "simple": UnitWeighting, "snr": SNRWeighting, "min_snr": MinSNRWeighting,
             "sigmoid": SigmoidWeighting, "edm": EDMWeighting}
    if key not in table:
        raise ValueError(f"unknown loss weighting {name!r}; expected one of {sorted(table)}")
    return table[key](**kwargs)


def multiscale_mse(pred: Tensor, target: Tensor, base_resolution: int = 8) -> Tensor:
    """Multiscale loss of simple diffusion (section 3.2), per example.

    ``L = sum_s (1/s) L^{s x s} / sum_s (1/s)`` over the native grid and its 2x average-pooled
    versions down to ``base_resolution`` (the shorter side), where ``L^{s x s}`` is the mean
    squared error of the average-pooled prediction and target (average pooling is linear, so the
    pooled prediction is a consistent lower-resolution model, as the paper argues). ``s`` is the
    effective side ``sqrt(h w)`` at each level. The weights are normalised to sum to 1 (a
    constant factor the paper leaves out) so losses stay comparable with the plain MSE.

    Args:
        pred: ``(B, C, H, W)`` full-grid prediction. target: same shape.
        base_resolution: the smallest shorter side included (>= 1).

    Returns:
        ``(B,)`` loss.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"multiscale_mse needs two (B, C, H, W) tensors of one shape, got {pred.shape} and {target.shape}")
    if base_resolution < 1:
        raise ValueError(f"base_resolution must be >= 1, got {base_resolution}")
    err = (pred.float() - target.float())
    total = torch.zeros(pred.shape[0], device=pred.device)
    weights = 0.0
    while True:
        h, w = err.shape[-2:]
        s = math.sqrt(h * w)
        total = total + err.pow(2).mean(dim=(1, 2, 3)) / s
        weights += 1.0 / s
        if min(h, w) // 2 < base_resolution or h % 2 or w % 2:
            break
        err = F.avg_pool2d(err, 2)
    return total / weights
