"""Noise operators ``T``: identity (plain diffusion) and the heat-kernel mollifier (∞-Diff).

Mollified diffusion (Bond-Taylor & Willcocks 2024, section 3, eq. 9) corrupts
``x_t = alpha T x_0 + sigma T xi`` with a Gaussian blur ``T``. Because ``T`` is linear, every
diffusion coefficient is unchanged: only "draw noise" becomes "draw ``T xi``" and the clean
estimate becomes ``T x_0``. An :class:`IdentityOperator` gives plain diffusion.

The heat kernel is applied as a multiplier on orthonormal DCT-II coefficients over pixel
centres (reflective boundaries). On an axis of ``N`` pixels, the DCT-II basis vector
``cos(pi k (i + 1/2) / N)`` is the continuous mode ``cos(pi k x)`` sampled at pixel centres
``x = (i + 1/2) / N``; a Gaussian of standard deviation ``s`` (domain units) multiplies it by
``exp(-(pi k s)^2 / 2)`` (eq. 8's ``exp(-omega^2 t)`` with ``omega = pi k`` and ``t = s^2/2``).
All operator maths runs in float32 (or float64 for float64 inputs) with autocast disabled.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from functools import lru_cache

import torch
from torch import Tensor

from .coords import CANVASES, Grid, as_grid, check_grid

__all__ = ["NoiseOperator", "IdentityOperator", "HeatKernelOperator", "band_taper", "dct_matrix", "build_operator"]


@lru_cache(maxsize=64)
def _dct_matrix_cpu(n: int) -> Tensor:
    i = torch.arange(n, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)[:, None]
    mat = torch.cos(math.pi * k * (i + 0.5) / n) * math.sqrt(2.0 / n)
    mat[0] /= math.sqrt(2.0)
    return mat


def dct_matrix(n: int, device: torch.device | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal DCT-II matrix ``C`` (``C @ C.T = I``): row ``k`` is mode ``cos(pi k (i+1/2)/n)``."""
    return _dct_matrix_cpu(int(n)).to(device=device, dtype=dtype)


def _work_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_field(x: Tensor, where: str) -> tuple[int, int]:
    if x.dim() < 2:
        raise ValueError(f"{where}: expected a field (..., H, W), got shape {tuple(x.shape)}")
    grid = check_grid((x.shape[-2], x.shape[-1]))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{where}: input contains NaN or inf values")
    return grid


class NoiseOperator(ABC):
    """A linear, self-adjoint operator ``T`` on fields ``(..., H, W)`` and its noise.

    A field's shape alone does not say where its pixels lie: :meth:`at` binds the operator to a
    canvas (:class:`~lightning_infdiff.coords.Grid`), which fields given by shape then use;
    methods taking a ``grid`` use that grid's own canvas when it is a ``Grid``.
    """

    canvas: str = "stretch"

    def at(self, canvas: str) -> NoiseOperator:
        """This operator for fields on ``canvas`` (``stretch`` or ``wide``)."""
        if canvas == self.canvas:
            return self
        if canvas not in CANVASES:
            raise ValueError(f"canvas must be one of {CANVASES}, got {canvas!r}")
        out = copy.copy(self)
        out.canvas = canvas
        return out

    def grid_of(self, grid: tuple[int, int]) -> Grid:
        """``grid`` as a :class:`Grid`, on this operator's canvas unless it is a ``Grid`` already."""
        return grid if isinstance(grid, Grid) else as_grid(grid, self.canvas)

    @abstractmethod
    def apply(self, x: Tensor) -> Tensor:
        """``T x`` on the last two dimensions."""

    @abstractmethod
    def noise_scale(self, grid: tuple[int, int]) -> float:
        """Factor ``c`` in the mollified noise ``c T xi`` on this grid."""

    def noise(self, white: Tensor) -> Tensor:
        """Mollified noise ``c T xi`` from white noise ``xi`` of the field's shape."""
        return self.apply(white) * self.noise_scale((white.shape[-2], white.shape[-1]))

    @abstractmethod
    def wiener(self, x: Tensor, inverse_snr: float | None = None, band: float | None = None) -> Tensor:
        """Approximate inverse of ``T`` (Wiener filter) for display, limited to the training ``band``
        (DCT modes per unit length) where given; identity for plain diffusion."""

    @abstractmethod
    def inverse(self, x: Tensor) -> Tensor:
        """Exact inverse ``T^{-1} x`` (ill-conditioned for wide blurs: for tests and tiny blurs)."""

    @property
    def is_identity(self) -> bool:
        """True when ``T`` is the identity."""
        return False


class IdentityOperator(NoiseOperator):
    """``T = I``: plain Gaussian diffusion with white noise."""

    def apply(self, x: Tensor) -> Tensor:
        _check_field(x, "IdentityOperator.apply")
        return x

    def noise_scale(self, grid: tuple[int, int]) -> float:
        check_grid(grid)
        return 1.0

    def wiener(self, x: Tensor, inverse_snr: float | None = None, band: float | None = None) -> Tensor:
        return x

    def inverse(self, x: Tensor) -> Tensor:
        return x

    @property
    def is_identity(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "IdentityOperator()"


class HeatKernelOperator(NoiseOperator):
    """Gaussian blur (heat kernel) as a DCT-II multiplier, with a resolution-free width.

    The blur is isotropic in domain units (:mod:`lightning_infdiff.coords`) with standard
    deviation ``width`` (a fraction of the training image's side), so the same physical blur
    applies at every resolution and canvas: ``width / p`` pixels along an axis of pitch ``p``
    (``width * min(H, W)`` on both axes of a ``wide`` canvas, ``width * H`` and ``width * W`` on a
    ``stretch`` one, whose pixels are not square). On an axis of extent ``E`` domain units the DCT
    mode ``k`` is multiplied by ``exp(-(pi k width / E)^2 / 2)`` (on the unit square the eigenvalue
    of mode ``(k_y, k_x)`` is ``exp(-(pi width)^2 (k_y^2 + k_x^2) / 2)``). ∞-Diff blurs with std 1
    pixel at 256x256, i.e. ``width = 1/256``.

    Noise (``normalise_noise=True``, the default): ``c = sqrt(H W / sum_k m_k^2)`` so that
    ``c T xi`` has mean pointwise variance exactly 1 on every grid (``m_k`` the 2D multipliers);
    zero width gives ``c = 1`` and plain white noise. With ``normalise_noise=False`` we follow
    ∞-Diff instead: white noise is scaled by ``sqrt(d_y d_x) / reference`` before blurring (the
    ``N'/N`` rule, ``d`` the pixels per domain unit of each axis: ``sqrt(H W)`` on the unit
    square), which keeps the pointwise variance constant across resolutions at its value on the
    ``reference`` grid (about ``1 / (4 pi (width * reference)^2)``).

    Display (:meth:`wiener`): ∞-Diff's Wiener filter ``m / (m^2 + epsilon^2)`` restores every mode
    up to ``1 / (2 epsilon)`` times, also modes the model never learned: above the training grid's
    Nyquist frequency, and near it, where a small model's clean estimate is mostly error. Given the
    training band (``band``: DCT modes per unit length of the training grid, i.e. its side), the
    filter is multiplied by a raised cosine that falls from 1 at ``band_taper[0] * band`` to 0 at
    ``band_taper[1] * band`` along each axis. With (0.5, 1.0) the main job's samples are as smooth
    as real digits at 1x, 2x and 4x, where the plain filter makes them several times rougher
    (``benchmarks/bench_artifacts.py``, ``benchmarks/results/artifacts.md``).

    Args:
        width: blur standard deviation as a fraction of the shorter image side (>= 0; 0 = identity).
        inverse_snr: default ``epsilon`` of the Wiener filter ``m / (m^2 + epsilon^2)`` (∞-Diff: 0.05).
        normalise_noise: unit pointwise noise variance on every grid (see above).
        reference: reference side for the ∞-Diff noise scaling when ``normalise_noise=False``.
        band_taper: ``(start, end)`` of the display filter's taper as fractions of the training
            band (``None``: ∞-Diff's plain Wiener filter at every grid).
    """

    def __init__(
        self, width: float = 1.0 / 32, inverse_snr: float = 0.05, normalise_noise: bool = True, reference: int = 32,
        band_taper: tuple[float, float] | None = (0.5, 1.0),
    ) -> None:
        if not math.isfinite(width) or width < 0:
            raise ValueError(f"mollifier width must be a finite non-negative number, got {width}")
        if inverse_snr <= 0:
            raise ValueError(f"inverse_snr must be positive, got {inverse_snr}")
        if reference < 2:
            raise ValueError(f"reference must be >= 2, got {reference}")
        if band_taper is not None:
            band_taper = (float(band_taper[0]), float(band_taper[1]))
            if not 0.0 <= band_taper[0] < band_taper[1]:
                raise ValueError(f"band_taper must be (start, end) with 0 <= start < end, got {band_taper}")
        self.band_taper = band_taper
        self.width = float(width)
        self.inverse_snr = float(inverse_snr)
        self.normalise_noise = normalise_noise
        self.reference = int(reference)

    # -- spectra -------------------------------------------------------------------------
    def axis_std(self, grid: tuple[int, int]) -> tuple[float, float]:
        """Blur std along each axis as a fraction of the window's extent on that axis (the DCT's
        ``[0, 1]`` per axis): ``width / E``."""
        ey, ex = self.grid_of(grid).extent
        return self.width / ey, self.width / ex

    def pixels(self, grid: tuple[int, int]) -> tuple[float, float]:
        """Blur std in pixels along each axis of ``grid``."""
        g = self.grid_of(grid)
        return self.width / g.pitch[0], self.width / g.pitch[1]

    def axis_multipliers(self, n: int, std: float) -> Tensor:
        """``exp(-(pi k std)^2 / 2)`` for ``k = 0..n-1`` (float64)."""
        k = torch.arange(n, dtype=torch.float64)
        return torch.exp(-0.5 * (math.pi * k * std) ** 2)

    def multipliers(self, grid: tuple[int, int]) -> Tensor:
        """2D DCT multipliers ``(H, W)`` (float64)."""
        h, w = check_grid(grid)
        sy, sx = self.axis_std(self.grid_of(grid))
        return self.axis_multipliers(h, sy)[:, None] * self.axis_multipliers(w, sx)[None, :]

    def blur_matrix(self, n: int, std: float, device: torch.device, dtype: torch.dtype) -> Tensor:
        """The symmetric ``n x n`` blur ``C^T diag(m) C`` along one axis."""
        c = dct_matrix(n)
        mat = c.T @ (self.axis_multipliers(n, std)[:, None] * c)
        return mat.to(device=device, dtype=dtype)

    # -- operator ------------------------------------------------------------------------
    def apply(self, x: Tensor) -> Tensor:
        h, w = _check_field(x, "HeatKernelOperator.apply")
        if self.width == 0.0:
            return x
        dt = _work_dtype(x)
        sy, sx = self.axis_std(self.grid_of((h, w)))
        with torch.autocast(device_type=x.device.type, enabled=False):
            ky = self.blur_matrix(h, sy, x.device, dt)
            kx = self.blur_matrix(w, sx, x.device, dt)
            out = ky @ x.to(dt) @ kx  # both symmetric: T = K_y (x) K_x
        return out.to(x.dtype) if x.dtype in (torch.float32, torch.float64) else out

    def noise_scale(self, grid: tuple[int, int]) -> float:
        g = self.grid_of(grid)
        h, w = g
        if self.normalise_noise:
            return math.sqrt(h * w / float((self.multipliers(g) ** 2).sum()))
        return math.sqrt(g.density[0] * g.density[1]) / self.reference

    def _spectral(self, x: Tensor, mult: Tensor) -> Tensor:
        h, w = x.shape[-2], x.shape[-1]
        dt = _work_dtype(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            cy = dct_matrix(h, x.device, dt)
            cx = dct_matrix(w, x.device, dt)
            coef = cy @ x.to(dt) @ cx.T
            out = cy.T @ (coef * mult.to(device=x.device, dtype=dt)) @ cx
        return out

    def wiener(self, x: Tensor, inverse_snr: float | None = None, band: float | None = None) -> Tensor:
        """Wiener filter ``m / (m^2 + eps^2)`` on DCT coefficients (∞-Diff section 3.2), limited to
        the training ``band`` by :attr:`band_taper` when both are given (see the class docstring)."""
        h, w = _check_field(x, "HeatKernelOperator.wiener")
        eps = self.inverse_snr if inverse_snr is None else float(inverse_snr)
        if eps <= 0:
            raise ValueError(f"inverse_snr must be positive, got {eps}")
        if self.width == 0.0:  # plain diffusion: nothing was blurred, nothing to restore
            return x * (1.0 / (1.0 + eps**2))
        g = self.grid_of((h, w))
        m = self.multipliers(g)
        gain = m / (m**2 + eps**2)
        if band is not None and self.band_taper is not None:
            # the band in this window's DCT modes: modes per domain unit times the extent
            (ey, ex), (a, b) = g.extent, self.band_taper
            ty = band_taper(h, a * band * ey, b * band * ey)
            tx = band_taper(w, a * band * ex, b * band * ex)
            gain = gain * ty[:, None] * tx[None, :]
        return self._spectral(x, gain)

    def inverse(self, x: Tensor) -> Tensor:
        h, w = _check_field(x, "HeatKernelOperator.inverse")
        if self.width == 0.0:
            return x
        return self._spectral(x, 1.0 / self.multipliers(self.grid_of((h, w))))

    def __repr__(self) -> str:
        canvas = "" if self.canvas == "stretch" else f", canvas={self.canvas!r}"
        return (
            f"HeatKernelOperator(width={self.width}, inverse_snr={self.inverse_snr}, "
            f"normalise_noise={self.normalise_noise}, reference={self.reference}, band_taper={self.band_taper}{canvas})"
        )


def band_taper(n: int, start: float, end: float) -> Tensor:
    """Raised-cosine weights of the DCT modes ``k = 0..n-1`` (float64): 1 for ``k <= start``,
    ``(1 + cos(pi (k - start) / (end - start))) / 2`` between, 0 for ``k >= end``."""
    k = torch.arange(n, dtype=torch.float64)
    t = ((k - start) / (end - start)).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def build_operator(name: str, **kwargs: float) -> NoiseOperator:
    """Build an operator by name: ``identity`` (or ``white``) or ``heat`` (or ``mollifier``).

    Raises:
        ValueError: for an unknown name.
    """
    key = name.lower()
    if key in ("identity", "white", "plain"):
        return IdentityOperator()
    if key in ("heat", "heat_kernel", "mollifier", "mollified"):
        return HeatKernelOperator(**kwargs)
    raise ValueError(f"unknown noise operator {name!r}; expected 'identity' or 'heat'")
