"""One Gaussian diffusion process: schedule x noise operator x parametrisation x weighting.

Forward corruption (∞-Diff eq. 9 with simple diffusion's logSNR notation)::

    x_t = alpha(lambda) T x0 + sigma(lambda) c T xi,    alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)

computed on the dense grid (the blur needs every pixel) and then gathered at the sampled
coordinates; the loss is averaged over the sampled coordinates only. With the identity
operator this is plain Gaussian diffusion, and a heat kernel of zero width reproduces it
exactly. The posterior ``q(x_s | x_t, x0)`` is eq. 10 with ``T x0`` in place of ``x0`` and
covariance ``beta_tilde T T*`` (see :func:`posterior`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from jsonargparse import lazy_instance
from torch import Tensor

from .coords import as_grid, full_coords, gather, index_to_coords, jitter_coords, scatter
from .losses import UnitWeighting, Weighting, build_weighting, multiscale_mse
from .noise_levels import NoiseLevels, UniformTime
from .operators import IdentityOperator, NoiseOperator
from .parametrisations import Parametrisation, build_parametrisation
from .schedules import CosineSchedule, Schedule, alpha_sigma

__all__ = ["GaussianProcess", "Corruption", "posterior", "training_band"]


@dataclass
class Corruption:
    """Everything drawn for one forward corruption (dense ``(B, C, H, W)`` tensors)."""

    x_t: Tensor
    white: Tensor  # c * xi
    y0: Tensor  # T x0
    noise: Tensor  # c T xi
    logsnr: Tensor  # (B,)


def _b(coef: Tensor, like: Tensor) -> Tensor:
    return coef.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def posterior(logsnr_t: Tensor, logsnr_s: Tensor, variance_interp: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of ``q(x_s | x_t, x0)`` for ``lambda_s > lambda_t`` (∞-Diff eq. 10).

    ``mean = coef_y0 * T x0 + coef_xt * x_t`` and covariance ``var * T T*`` with
    ``r = SNR_t / SNR_s``: ``coef_xt = r alpha_s / alpha_t``, ``coef_y0 = (1 - r) alpha_s`` and
    ``var = (1 - r) sigma_s^2``. In DDPM notation (``alpha_bar = sigmoid(lambda)``) these are
    ``sqrt(alpha_bar_s) beta / (1 - alpha_bar_t)``, ``sqrt(alpha_t)(1 - alpha_bar_s)/(1 - alpha_bar_t)``
    and ``beta_tilde = (1 - alpha_bar_s) beta / (1 - alpha_bar_t)`` with ``alpha_t = alpha_bar_t / alpha_bar_s``.
    The samplers (:mod:`lightning_infdiff.samplers`) take their coefficients from here.

    Args:
        logsnr_t, logsnr_s: the noise levels (tensors of one shape or broadcastable).
        variance_interp: ``g``: ``var = exp(g log beta + (1 - g) log beta_tilde)`` with
            ``beta = (1 - r) sigma_t^2`` (Nichol & Dhariwal 2021's interpolation; simple diffusion,
            appendix A, uses ``g = 0.2`` for sampling); 0 is the posterior variance itself.

    Returns:
        ``(coef_y0, coef_xt, var)``.
    """
    a_t, s_t = alpha_sigma(logsnr_t)
    a_s, s_s = alpha_sigma(logsnr_s)
    one_minus_r = -torch.expm1(logsnr_t - logsnr_s)
    r = 1.0 - one_minus_r
    var = one_minus_r * s_s**2
    if variance_interp != 0.0:
        g = variance_interp
        var = torch.exp(g * torch.log(one_minus_r * s_t**2) + (1 - g) * torch.log(var))
    return one_minus_r * a_s, r * (a_s / a_t), var


def training_band(denoiser: object, grid: tuple[int, int], known: int | None = None) -> int:
    """The band (training grid side) the display filter may restore: ``known`` (the data's
    resolution, when the caller knows it), else the denoiser's ``train_resolution``, else the
    sampling grid's shorter side (then nothing beyond the grid's own band is assumed)."""
    if known is not None:
        return int(known)
    res = getattr(denoiser, "train_resolution", None)
    return int(res) if res is not None else min(int(grid[0]), int(grid[1]))


class GaussianProcess:
    """Gaussian diffusion composed of parts (design notes, section 3).

    Args:
        schedule: logSNR schedule (default: cosine with logSNR in [-15, 15]).
        operator: noise operator ``T`` (default: identity = plain diffusion; a
            :class:`~lightning_infdiff.operators.HeatKernelOperator` gives ∞-Diff's mollified diffusion).
        parametrisation: network target: ``eps``, ``mollified_eps`` (∞-Diff's ``T xi``), ``v``, ``x0``,
            ``flow`` (flow matching's velocity) or ``edm`` (EDM's preconditioned network), or a
            :class:`~lightning_infdiff.parametrisations.Parametrisation` (e.g. EDM with another ``sigma_data``).
        weighting: loss weighting over noise levels: ``unit``, ``snr``, ``min_snr``, ``sigmoid``, ``edm``
            or a :class:`Weighting`.
        noise_levels: the distribution of training logSNRs (default: ``t ~ U(0, 1)`` through the
            schedule; :mod:`lightning_infdiff.noise_levels`).
        multiscale: use simple diffusion's multiscale loss (section 3.2); needs full grids.
        multiscale_base: smallest resolution in the multiscale loss.
    """

    def __init__(
        self,
        schedule: Schedule = lazy_instance(CosineSchedule),
        operator: NoiseOperator = lazy_instance(IdentityOperator),
        parametrisation: str | Parametrisation = "v",
        weighting: str | Weighting = "unit",
        multiscale: bool = False,
        multiscale_base: int = 8,
        noise_levels: NoiseLevels = lazy_instance(UniformTime),
    ) -> None:
        self.schedule = schedule if schedule is not None else CosineSchedule()
        self.operator = operator if operator is not None else IdentityOperator()
        self.param: Parametrisation = build_parametrisation(parametrisation)
        self.weighting = build_weighting(weighting) if weighting is not None else UnitWeighting()
        self.multiscale = bool(multiscale)
        self.noise_levels = noise_levels if noise_levels is not None else UniformTime()
        if multiscale_base < 1:
            raise ValueError(f"multiscale_base must be >= 1, got {multiscale_base}")
        self.multiscale_base = int(multiscale_base)

    def at(self, canvas: str) -> GaussianProcess:
        """This process for fields on ``canvas`` (its operator bound there, see
        :meth:`~lightning_infdiff.operators.NoiseOperator.at`)."""
        op = self.operator.at(canvas)
        if op is self.operator:
            return self
        out = copy.copy(self)
        out.operator = op
        return out

    # -- forward process ----------------------------------------------------------------
    def sample_logsnr(
        self, batch: int, grid: tuple[int, int], device: torch.device | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Training logSNRs ``(B,)`` float32 from :attr:`noise_levels` (default: ``t ~ U(0, 1)`` through the schedule)."""
        return self.noise_levels.sample(batch, self.schedule, grid, generator).to(device=device, dtype=torch.float32)

    def corrupt(
        self, x0: Tensor, logsnr: Tensor, white: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Corruption:
        """``x_t = alpha T x0 + sigma c T xi`` on the dense grid (float32 maths)."""
        with torch.autocast(device_type=x0.device.type, enabled=False):
            x0 = x0.float()
            grid = (x0.shape[-2], x0.shape[-1])
            if white is None:
                gen_dev = generator.device if generator is not None else x0.device
                white = torch.randn(x0.shape, generator=generator, device=gen_dev).to(x0.device)
                white = white * self.operator.noise_scale(grid)
            y0 = self.operator.apply(x0)
            noise = self.operator.apply(white)
            a, s = alpha_sigma(logsnr.float())
            x_t = _b(a, x0) * y0 + _b(s, x0) * noise
        return Corruption(x_t=x_t, white=white, y0=y0, noise=noise, logsnr=logsnr)

    def target(self, x0: Tensor, c: Corruption) -> Tensor:
        """The regression target (dense) of the parametrisation."""
        return self.param.target(x0.float(), c.white, c.y0, c.noise, c.logsnr.float())

    # -- training loss ------------------------------------------------------------------
    def loss(
        self,
        denoiser: torch.nn.Module,
        x0: Tensor,
        indices: Tensor | None = None,
        cond: Tensor | None = None,
        logsnr: Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
        grid: tuple[int, int] | None = None,
        offsets: Tensor | None = None,
    ) -> Tensor:
        """Per-example weighted loss over the sampled coordinates, ``(B,)``.

        Args:
            denoiser: any :class:`~lightning_infdiff.denoisers.Denoiser`.
            x0: dense clean images ``(B, C, H, W)`` in ``[-1, 1]``.
            indices: ``(B, N)`` sampled flat indices, or ``None`` for the full grid.
            cond: optional condition passed to the denoiser.
            logsnr: noise levels ``(B,)``; drawn from the schedule when ``None``.
            generator: optional generator for the noise levels and the noise.
            noise: optional standard-normal draw ``xi`` of ``x0``'s shape (e.g. fixed validation
                noise); it is scaled by the operator's noise scale here.
            grid: where the images lie (a :class:`~lightning_infdiff.coords.Grid`; data batches
                give a ``wide`` one, square pixels); default: ``x0``'s shape on the unit square.
            offsets: sub-pixel coordinate jitter ``(B, N, 2)`` in pixels for the denoiser's
                coordinates (values and targets stay those of the pixels).
        """
        b = x0.shape[0]
        shape = (x0.shape[-2], x0.shape[-1])
        grid = as_grid(shape) if grid is None else as_grid(grid)
        if tuple(grid) != shape:
            raise ValueError(f"grid {tuple(grid)} does not match the images' {shape}")
        if not grid.unit and self.operator.canvas != grid.canvas:
            return self.at(grid.canvas).loss(denoiser, x0, indices, cond, logsnr, generator, noise, grid, offsets)
        if logsnr is None:
            logsnr = self.sample_logsnr(b, grid, x0.device, generator)
        white = None if noise is None else noise.to(x0.device).float() * self.operator.noise_scale(grid)
        c = self.corrupt(x0, logsnr, white=white, generator=generator)
        target = self.target(x0, c)
        coords = full_coords(b, grid, x0.device) if indices is None else index_to_coords(indices, grid)
        if offsets is not None:
            coords = jitter_coords(coords, offsets, grid)
        x_in = gather(self.net_input(c.x_t, logsnr), indices)
        out = denoiser(x_in.to(x0.dtype), coords, logsnr, grid, cond).float()
        if self.multiscale:
            if indices is not None:
                raise ValueError("the multiscale loss needs full grids (indices=None); disable multiscale or subsampling")
            mse = multiscale_mse(scatter(out, None, grid)[0], target, self.multiscale_base)
        else:
            mse = (out - gather(target, indices)).pow(2).mean(dim=(1, 2))
        return self.weighting(logsnr.float(), self.param) * mse

    # -- reverse process helpers --------------------------------------------------------
    def net_input(self, x_t: Tensor, logsnr: Tensor) -> Tensor:
        """What the network sees of the state: ``c_in(lambda) x_t`` (the parametrisation's scale)."""
        return _b(self.param.input_scale(logsnr.float()), x_t) * x_t

    def to_y0_noise(self, out: Tensor, x_t: Tensor, logsnr: Tensor) -> tuple[Tensor, Tensor]:
        """Dense network output -> ``(T x0 estimate, c T xi estimate)``."""
        return self.param.to_y0_noise(out.float(), x_t.float(), logsnr.float(), self.operator)

    def display(self, y0: Tensor, inverse_snr: float | None = None, band: float | None = None) -> Tensor:
        """Undo the mollifier approximately (Wiener filter) for display and metrics, restoring modes
        only within the training ``band`` (the training grid's side; see
        :class:`~lightning_infdiff.operators.HeatKernelOperator`) when it is given."""
        if self.operator.is_identity:
            return y0
        return self.operator.wiener(y0, inverse_snr, band)

    def __repr__(self) -> str:
        return (
            f"GaussianProcess(schedule={self.schedule!r}, operator={self.operator!r}, "
            f"parametrisation={self.param.name!r}, weighting={self.weighting!r}, multiscale={self.multiscale}, "
            f"noise_levels={self.noise_levels!r})"
        )
