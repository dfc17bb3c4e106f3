"""The depthwise kernel at another grid: its size, its bilinear resampling, and the factored form.

A kernel of ``k`` taps at the training resolution becomes ``k' ≈ k·s`` taps on a grid ``s``
times finer (:func:`resized_kernel_size`); its taps are the bilinear interpolant of the
zero-padded training kernel, ``w' = M_y w M_xᵀ`` (:func:`resize_kernel`); at integer ``s`` the
convolution with ``w'`` factors into a tent filter and the dilated training kernel
(:func:`tent_factored_conv2d`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["integer_scales", "resize_kernel", "resized_kernel_size", "tent_factored_conv2d"]


def _axis_scale(train_size: int, size: int) -> float:
    return size / train_size


def resized_kernel_size(kernel_size: int, train_size: int, size: int) -> int:
    """Odd kernel size at a grid ``s = size / train_size`` times finer than the training grid.

    The resized kernel (:func:`resize_kernel`) is the bilinear interpolant of the zero-padded
    training kernel, so its support reaches ``r + h`` training pixels (``r = (k - 1) / 2``,
    ``h = max(1, 1/s)`` the half-width of the interpolation tent), i.e.
    ``r' = ceil((r + h)·s) - 1`` new pixels and ``k' = 2r' + 1`` (≈ ``k·s``: 7 -> 15 at 2x,
    31 at 4x, 5 at 0.5x; ``k`` itself at ``s = 1``).
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if size == train_size:
        return kernel_size
    s = _axis_scale(train_size, size)
    r = (kernel_size - 1) / 2
    return 2 * (math.ceil((r + max(1.0, 1.0 / s)) * s - 1e-9) - 1) + 1


def _resample_matrix(k: int, k_new: int, s: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(k_new, k)`` tent weights: new tap ``i`` sits at ``(i - r') / s`` training pixels."""
    r, r_new = (k - 1) / 2, (k_new - 1) / 2
    hw = max(1.0, 1.0 / s)
    p = (torch.arange(k_new, device=device, dtype=torch.float64) - r_new) / s
    q = torch.arange(k, device=device, dtype=torch.float64) - r
    m = (1.0 - (p[:, None] - q[None, :]).abs() / hw).clamp_min(0.0) * min(1.0, s)
    return m.to(dtype)


def resize_kernel(weight: Tensor, size: tuple[int, int], scale: tuple[float, float]) -> Tensor:
    """Resample a depthwise kernel ``(C, 1, k, k)`` to ``(C, 1, kh, kw)`` for a finer grid.

    Bilinear interpolation of the zero-padded kernel at the new tap positions (a triangle
    filter of half-width ``1/s`` when coarsening, i.e. antialiased). The tent weights of every
    old tap sum to ``s`` per axis, so the kernel's mass scales by exactly ``s_y·s_x`` at integer
    factors (the normalisation in :class:`PointLattice` divides it out) and at integer
    upsampling the old taps are reproduced exactly (paper, section 5: bilinear kernels).

    Args:
        weight: ``(C, 1, k, k)`` kernel at the training resolution.
        size: ``(kh, kw)`` from :func:`resized_kernel_size`.
        scale: ``(s_y, s_x)`` grid-size ratios to the training resolution.
    """
    k = weight.shape[-1]
    if tuple(size) == (k, k) and tuple(scale) == (1.0, 1.0):
        return weight
    my = _resample_matrix(k, size[0], scale[0], weight.device, weight.dtype)
    mx = _resample_matrix(k, size[1], scale[1], weight.device, weight.dtype)
    return torch.einsum("ik,cakl,jl->caij", my, weight, mx)


def integer_scales(scale: tuple[float, float]) -> tuple[int, int] | None:
    """``(s_y, s_x)`` as integers when both are whole numbers ``>= 1`` and not both 1, else None.

    These are the grids where :func:`tent_factored_conv2d` reproduces the resized kernel exactly.
    """
    sy, sx = scale
    if sy < 1 or sx < 1 or not float(sy).is_integer() or not float(sx).is_integer() or (sy, sx) == (1, 1):
        return None
    return int(sy), int(sx)


def _tent(s: int, channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(2s-1)``-tap tent ``1 - |u|/s`` (:func:`_resample_matrix`'s weights at integer ``s``)."""
    u = torch.arange(-(s - 1), s, device=device, dtype=torch.float64)
    return (1.0 - u.abs() / s).to(dtype).expand(channels, -1)


def tent_factored_conv2d(x: Tensor, weight: Tensor, scales: tuple[int, int]) -> Tensor:
    """Zero-padded "same" depthwise conv with ``resize_kernel(weight)`` at integer grid ratios.

    With tents ``t(u) = max(0, 1 - |u|/s)`` the resized kernel is
    ``w'(a, b) = Σ_{i,j} w(i, j) t_y(a - i s_y) t_x(b - j s_x)`` (offsets from the centres), so

        (x ⋆ w')(p) = Σ_{i,j} w(i, j) · T(p + (i s_y, j s_x)),    T = x ⋆ (t_y ⊗ t_x),

    i.e. the tent-smoothed input (evaluated on the grid padded by ``r·s``, the input zero outside)
    followed by the training kernel dilated by ``s``: exact up to rounding, at a cost per pixel
    of ``k² + 2(2s - 1)`` instead of ``k'²``.

    Args:
        x: ``(B, C, H, W)`` canvas (any memory format).
        weight: ``(C, 1, k, k)`` kernel at the training resolution (``k`` odd).
        scales: integer ``(s_y, s_x)`` from :func:`integer_scales`.
    """
    c = x.shape[1]
    k = weight.shape[-1]
    r = (k - 1) // 2
    sy, sx = scales
    # Pad by the resized radius r' = (r + 1)s - 1: the tent (half-width s - 1) then yields T on
    # the grid extended by r·s, exactly where the dilated kernel reads it.
    py, px = (r + 1) * sy - 1, (r + 1) * sx - 1
    t = F.pad(x, (px, px, py, py))
    if sy > 1:
        t = F.conv2d(t, _tent(sy, c, x.dtype, x.device).reshape(c, 1, -1, 1), groups=c)
    if sx > 1:
        t = F.conv2d(t, _tent(sx, c, x.dtype, x.device).reshape(c, 1, 1, -1), groups=c)
    return F.conv2d(t, weight.to(x.dtype), dilation=(sy, sx), groups=c)
