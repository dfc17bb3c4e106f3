"""Noise schedules expressed in log signal-to-noise ratio.

A schedule maps diffusion time ``t in [0, 1]`` (0 = clean, 1 = noise) to
``lambda(t) = log(alpha_t^2 / sigma_t^2)``, strictly decreasing, with the variance-preserving
identities ``alpha^2 = sigmoid(lambda)`` and ``sigma^2 = sigmoid(-lambda)`` (Kingma et al. 2021;
simple diffusion, Hoogeboom et al. 2023, section 2). Every schedule is *bound to a grid*:
``logsnr(t, grid)`` takes the pixel grid ``(H, W)`` it is used on, so resolution-aware schedules
(:class:`ShiftedSchedule`, :class:`InterpolatedShiftedSchedule`) shift correctly when a model
samples at another resolution, while plain schedules ignore it.

Denoisers are conditioned on lambda, never on ``t``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from .coords import as_grid

__all__ = [
    "Schedule",
    "CosineSchedule",
    "LinearSchedule",
    "ShiftedSchedule",
    "InterpolatedShiftedSchedule",
    "RectifiedFlowSchedule",
    "KarrasSchedule",
    "alpha_sigma",
    "effective_resolution",
    "build_schedule",
]


def alpha_sigma(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """``(alpha, sigma)`` from logSNR: ``alpha^2 = sigmoid(l)``, ``sigma^2 = sigmoid(-l)``."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def effective_resolution(grid: tuple[int, int]) -> float:
    """Pixels per domain unit of ``grid``, ``d = sqrt(d_y d_x)`` (:class:`~lightning_infdiff.coords.Grid`).

    This is our rule for the resolution shift of simple diffusion: the shift's derivation
    (section 3.1, eq. 4) counts how many pixels are averaged into one pixel of the reference
    grid, i.e. the pixel density. On the unit square (a plain ``(H, W)``, a ``stretch`` canvas)
    ``d = sqrt(H W)``; a ``wide`` canvas has the density of its shorter side, so a wider view at the
    training pitch is not shifted.
    """
    dy, dx = as_grid(grid).density
    return math.sqrt(dy * dx)


def _as_tensor(t: Tensor | float) -> Tensor:
    return t if isinstance(t, Tensor) else torch.tensor(float(t), dtype=torch.float64)


def _logsnr_range(logsnr_min: float, logsnr_max: float) -> tuple[float, float]:
    """A clipped schedule's ends, checked."""
    if not logsnr_min < logsnr_max:
        raise ValueError(
            f"logsnr_min must be smaller than logsnr_max, got logsnr_min={logsnr_min}, logsnr_max={logsnr_max}"
        )
    return float(logsnr_min), float(logsnr_max)


class Schedule(ABC):
    """A strictly decreasing map ``t in [0, 1] -> logSNR``; see the module docstring."""

    @abstractmethod
    def logsnr(self, t: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """logSNR at times ``t`` on the given grid (computed in float64 or the input's float type)."""

    def t_of_logsnr(self, logsnr: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """Inverse ``t(lambda)``; generic bisection (60 halvings, float64), clamped to ``[0, 1]``.

        Subclasses with a closed form override this.
        """
        lam = _as_tensor(logsnr).to(torch.float64)
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.logsnr(mid, grid).to(torch.float64) > lam  # still too clean: go later
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(_as_tensor(logsnr).dtype)

    def logsnr_max(self, grid: tuple[int, int] | None = None) -> float:
        """logSNR at ``t = 0`` (the cleanest level)."""
        return float(self.logsnr(torch.zeros((), dtype=torch.float64), grid))

    def logsnr_min(self, grid: tuple[int, int] | None = None) -> float:
        """logSNR at ``t = 1`` (the noisiest level)."""
        return float(self.logsnr(torch.ones((), dtype=torch.float64), grid))

    def discrete(self, steps: int, grid: tuple[int, int] | None = None) -> Tensor:
        """The discrete view: logSNR at ``t_i = i / steps``, ``i = 0..steps`` (float64)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return self.logsnr(torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64), grid)

    def alphas_cumprod(self, steps: int, grid: tuple[int, int] | None = None) -> Tensor:
        """DDPM-style ``alpha_bar_i = sigmoid(lambda(t_i))`` for ``t_i = i / steps``, ``i = 1..steps``."""
        return torch.sigmoid(self.discrete(steps, grid)[1:])


class CosineSchedule(Schedule):
    """The alpha-cosine schedule in logSNR form with clipped ends (simple diffusion, appendix A).

    ``lambda(t) = -2 log tan(t_min + t (t_max - t_min))`` with
    ``t_min = atan(exp(-lambda_max / 2))`` and ``t_max = atan(exp(-lambda_min / 2))``, so that
    ``lambda(0) = lambda_max`` and ``lambda(1) = lambda_min`` exactly (Nichol & Dhariwal 2021's
    ``alpha_t = cos(pi t / 2)`` between the clips).

    Args:
        logsnr_min: logSNR at ``t = 1``.
        logsnr_max: logSNR at ``t = 0``; must exceed ``logsnr_min``.
    """

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> None:
        self.lmin, self.lmax = _logsnr_range(logsnr_min, logsnr_max)
        self.t_min = math.atan(math.exp(-0.5 * self.lmax))
        self.t_max = math.atan(math.exp(-0.5 * self.lmin))

    def logsnr(self, t: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        t = _as_tensor(t)
        return -2.0 * torch.log(torch.tan(self.t_min + t * (self.t_max - self.t_min)))

    def t_of_logsnr(self, logsnr: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        lam = _as_tensor(logsnr)
        t = (torch.atan(torch.exp(-0.5 * lam)) - self.t_min) / (self.t_max - self.t_min)
        return t.clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"CosineSchedule(logsnr_min={self.lmin}, logsnr_max={self.lmax})"


class LinearSchedule(Schedule):
    """DDPM's linear beta schedule (Ho et al. 2020), exact at its knots.

    ``beta_i = beta_start + (beta_end - beta_start) (i - 1) / (T - 1)`` for ``i = 1..T`` and
    ``alpha_bar_i = prod_{j <= i} (1 - beta_j)``. Knot ``i`` sits at ``t_i = (i - 1) / (T - 1)``
    with ``lambda(t_i) = log(alpha_bar_i / (1 - alpha_bar_i))`` exactly; between knots lambda is
    linear in ``t`` (continuous, strictly decreasing, invertible in closed form).

    Args:
        beta_start: first beta (DDPM: 1e-4).
        beta_end: last beta (DDPM: 0.02).
        num_steps: number of DDPM steps T (DDPM: 1000).
    """

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000) -> None:
        if not 0.0 < beta_start < beta_end < 1.0:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
        if num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {num_steps}")
        self.beta_start, self.beta_end, self.num_steps = beta_start, beta_end, num_steps
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
        log_abar = torch.cumsum(torch.log1p(-betas), 0)
        # lambda = log(abar / (1 - abar)) = log_abar - log(-expm1(log_abar))
        self.knots = log_abar - torch.log(-torch.expm1(log_abar))

    def logsnr(self, t: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        t = _as_tensor(t)
        knots = self.knots.to(device=t.device, dtype=t.dtype if t.is_floating_point() else torch.float64)
        pos = t.clamp(0.0, 1.0) * (self.num_steps - 1)
        i0 = pos.floor().long().clamp(0, self.num_steps - 2)
        frac = pos - i0.to(pos.dtype)
        return knots[i0] + frac * (knots[i0 + 1] - knots[i0])

    def t_of_logsnr(self, logsnr: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        lam = _as_tensor(logsnr)
        knots = self.knots.to(device=lam.device, dtype=lam.dtype)
        # knots are decreasing: search on their negation
        j = torch.searchsorted(-knots, -lam.contiguous()).clamp(1, self.num_steps - 1)
        k0, k1 = knots[j - 1], knots[j]
        frac = (lam - k0) / (k1 - k0)
        return ((j - 1).to(lam.dtype) + frac).clamp(0, self.num_steps - 1) / (self.num_steps - 1)

    def __repr__(self) -> str:
        return f"LinearSchedule(beta_start={self.beta_start}, beta_end={self.beta_end}, num_steps={self.num_steps})"


class ShiftedSchedule(Schedule):
    """A schedule shifted to the grid it runs on (simple diffusion, section 3.1, eq. 5).

    ``lambda_shift(t; grid) = lambda_base(t) + 2 log(reference / d)`` with
    ``d = sqrt(H * W)`` (see :func:`effective_resolution`). At ``d = reference`` this is the base
    schedule; at ``d = 2 * reference`` every level has 4x less SNR. The clip bounds of the base
    shift along with it (as the paper's appendix A asks).

    Args:
        base: the schedule at the reference resolution (default: :class:`CosineSchedule`).
        reference: the reference resolution (simple diffusion: 64 or 32).
    """

    def __init__(self, base: Schedule | None = None, reference: int = 64) -> None:
        if reference < 2:
            raise ValueError(f"reference resolution must be >= 2, got {reference}")
        self.base = base if base is not None else CosineSchedule()
        self.reference = int(reference)

    def shift(self, grid: tuple[int, int] | None) -> float:
        """``2 log(reference / d)`` for the grid; a grid is required."""
        if grid is None:
            raise ValueError("ShiftedSchedule needs the grid (H, W) it is used on to compute its shift")
        return 2.0 * math.log(self.reference / effective_resolution(grid))

    def logsnr(self, t: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        return self.base.logsnr(t, grid) + self.shift(grid)

    def t_of_logsnr(self, logsnr: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        return self.base.t_of_logsnr(_as_tensor(logsnr) - self.shift(grid), grid)

    def __repr__(self) -> str:
        return f"ShiftedSchedule(base={self.base!r}, reference={self.reference})"


class InterpolatedShiftedSchedule(Schedule):
    """Interpolation between a low- and a high-reference shifted schedule (simple diffusion, eq. 6).

    We follow the paper's appendix A code, **not** equation (6) as printed:

    ``lambda(t) = t * lambda_shift(low)(t) + (1 - t) * lambda_shift(high)(t)``

    so at ``t = 1`` (where sampling starts) the schedule is the low-reference shift (most noise,
    global structure first) and at ``t = 0`` the high-reference one (fine details), which is what
    the prose says ("starting at shift 32 and interpolating in log-space to shift 256"). It is
    also strictly decreasing for any pair of references: ``d lambda / dt = lambda_base'(t) -
    2 log(high / low) < 0``. Equation (6) weights the other way round (``t`` on the high shift).

    Args:
        base: schedule at the reference resolutions (default :class:`CosineSchedule`).
        low_reference: reference of the shift used at ``t = 1`` (e.g. 32).
        high_reference: reference of the shift used at ``t = 0`` (e.g. 256).
    """

    def __init__(self, base: Schedule | None = None, low_reference: int = 32, high_reference: int = 256) -> None:
        if not 2 <= low_reference < high_reference:
            raise ValueError(
                f"need 2 <= low_reference < high_reference, got low_reference={low_reference}, "
                f"high_reference={high_reference}"
            )
        self.base = base if base is not None else CosineSchedule()
        self.low = ShiftedSchedule(self.base, low_reference)
        self.high = ShiftedSchedule(self.base, high_reference)

    def logsnr(self, t: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        t = _as_tensor(t)
        return t * self.low.logsnr(t, grid) + (1.0 - t) * self.high.logsnr(t, grid)

    def __repr__(self) -> str:
        return (
            f"InterpolatedShiftedSchedule(base={self.base!r}, low_reference={self.low.reference}, "
            f"high_reference={self.high.reference})"
        )


class RectifiedFlowSchedule(Schedule):
    """The linear (rectified-flow) path ``z_t = (1 - t) y0 + t n`` in logSNR form, with clipped ends.

    ``SNR = ((1 - t) / t)^2``, i.e. ``lambda(t) = 2 log((1 - s) / s)`` with
    ``s = s_min + t (s_max - s_min)`` and ``s_min = sigmoid(-lambda_max / 2)``,
    ``s_max = sigmoid(-lambda_min / 2)`` (Liu et al. 2023; Lipman et al. 2023's conditional OT path),
    so time-uniform sampling steps are uniform in flow matching's ``t``.

    Args:
        logsnr_min: logSNR at ``t = 1``.
        logsnr_max: logSNR at ``t = 0``; must exceed ``logsnr_min``.
    """

    def __init__(self, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> None:
        self.lmin, self.lmax = _logsnr_range(logsnr_min, logsnr_max)
        self.s_min = 1.0 / (1.0 + math.exp(0.5 * self.lmax))
        self.s_max = 1.0 / (1.0 + math.exp(0.5 * self.lmin))

    def logsnr(self, t: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        s = self.s_min + _as_tensor(t) * (self.s_max - self.s_min)
        return 2.0 * (torch.log1p(-s) - torch.log(s))

    def t_of_logsnr(self, logsnr: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        s = torch.sigmoid(-0.5 * _as_tensor(logsnr))
        return ((s - self.s_min) / (self.s_max - self.s_min)).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"RectifiedFlowSchedule(logsnr_min={self.lmin}, logsnr_max={self.lmax})"


class KarrasSchedule(Schedule):
    """EDM's noise levels (Karras et al. 2022, eq. 5) in logSNR form: ``lambda = -2 log sigma`` with
    ``sigma(t) = (sigma_min^(1/rho) + t (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``, so
    time-uniform sampling steps are EDM's.

    Args:
        sigma_min: smallest noise level (``t = 0``).
        sigma_max: largest noise level (``t = 1``).
        rho: curvature of the steps (EDM: 7).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> None:
        if not 0 < sigma_min < sigma_max or not rho > 0:
            raise ValueError(
                f"KarrasSchedule needs 0 < sigma_min < sigma_max and rho > 0, got {sigma_min}, {sigma_max}, {rho}"
            )
        self.sigma_min, self.sigma_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.lmin, self.lmax = -2.0 * math.log(self.sigma_max), -2.0 * math.log(self.sigma_min)
        self._a, self._b = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)

    def logsnr(self, t: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        return -2.0 * self.rho * torch.log(self._a + _as_tensor(t) * (self._b - self._a))

    def t_of_logsnr(self, logsnr: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        root = torch.exp(-0.5 * _as_tensor(logsnr) / self.rho)
        return ((root - self._a) / (self._b - self._a)).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"KarrasSchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho})"


_NAMES = {
    "cosine": CosineSchedule,
    "linear": LinearSchedule,
    "shifted": ShiftedSchedule,
    "shifted_cosine": ShiftedSchedule,
    "interpolated": InterpolatedShiftedSchedule,
    "interpolated_shifted": InterpolatedShiftedSchedule,
    "rectified_flow": RectifiedFlowSchedule,
    "karras": KarrasSchedule,
}


def build_schedule(name: str, **kwargs: float) -> Schedule:
    """Build a schedule by name (``cosine``, ``linear``, ``shifted``, ``interpolated``).

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    key = name.lower().replace("-", "_")
    if key not in _NAMES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {sorted(_NAMES)}")
    return _NAMES[key](**kwargs)
