"""The sub-pixel artifact measure against closed forms, and the band-limited display filter that
keeps a model's errors above its training band from being amplified (issue 33)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_infdiff.metrics.artifacts import (
    ArtifactMeter,
    artifact_sigma,
    gaussian_blur,
    highfreq_share,
    real_reference,
)
from lightning_infdiff.operators import HeatKernelOperator, band_taper, dct_matrix


def test_blur_keeps_constants_and_means():
    x = torch.full((2, 1, 9, 7), 0.3, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(x, 1.5), x)
    y = torch.randn(2, 3, 33, 33, dtype=torch.float64)
    assert float(gaussian_blur(y, 2.0).std()) < float(y.std())
    with pytest.raises(ValueError, match="sigma must be positive"):
        gaussian_blur(y, 0.0)


@pytest.mark.parametrize("period,sigma", [(8, 1.0), (16, 2.0), (4, 0.5)])
def test_share_of_a_sinusoid_is_one_minus_the_kernels_response_squared(period, sigma):
    """A(cos(2 pi f j)) = (1 - g(f))^2 away from the borders, g(f) = sum_t k_t cos(2 pi f t) the
    sampled Gaussian's response (the continuous exp(-2 pi^2 sigma^2 f^2) for wide kernels)."""
    from lightning_infdiff.metrics.artifacts import _kernel

    n = 512
    j = torch.arange(n, dtype=torch.float64)
    x = torch.cos(2 * math.pi * j / period).expand(1, 1, 8, n).contiguous()
    k = _kernel(sigma, torch.float64, torch.device("cpu"))
    t = torch.arange(k.numel(), dtype=torch.float64) - (k.numel() - 1) // 2
    gain = float((k * torch.cos(2 * math.pi * t / period)).sum())
    if sigma >= 1:
        assert gain == pytest.approx(math.exp(-2 * math.pi**2 * sigma**2 / period**2), rel=1e-3)
    assert float(highfreq_share(x, sigma)) == pytest.approx((1 - gain) ** 2, rel=0.03, abs=1e-4)


def test_share_is_scale_and_offset_free_and_flat_images_count_zero():
    x = torch.randn(3, 1, 24, 24)
    torch.testing.assert_close(highfreq_share(3 * x - 0.5, 1.0), highfreq_share(x, 1.0))
    assert float(highfreq_share(torch.zeros(1, 1, 8, 8), 1.0)) == 0.0
    assert artifact_sigma((32, 64)) == pytest.approx(32 / 56)


def test_meter_reads_uint8_as_saved_images_and_refuses_real_ones():
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    q = ((x + 1) * 127.5).round().to(torch.uint8)
    meter = ArtifactMeter((16, 16))
    meter.update(q[:2])
    meter.update(q[2:])
    assert meter.compute() == pytest.approx(float(highfreq_share(q.double() / 127.5 - 1, 16 / 56).mean()))
    meter.reset()
    with pytest.raises(ValueError, match="before any update"):
        meter.compute()
    with pytest.raises(ValueError, match="generated images only"):
        meter.update(q, real=True)


def test_real_reference_is_bicubic_from_the_training_resolution_and_centre_cropped():
    from lightning_infdiff.data import GaussianBlobs

    src = GaussianBlobs(8, 1)
    idx = np.arange(3)
    base = real_reference(src, idx, 16, (16, 16))
    up = real_reference(src, idx, 16, (32, 32))
    want = torch.nn.functional.interpolate(base, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(up, want)
    wide = real_reference(src, idx, 16, (16, 32))
    torch.testing.assert_close(wide, up[:, :, 8:24, :])


# ------------------------------------------------------------------ the display filter
def test_band_taper_is_a_raised_cosine():
    w = band_taper(40, 16.0, 32.0)
    assert torch.all(w[:17] == 1) and torch.all(w[32:] == 0)
    assert float(w[24]) == pytest.approx(0.5)
    assert torch.all(w[1:] <= w[:-1])


def _coefficients(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return dct_matrix(h) @ x.double() @ dct_matrix(w).T


def test_display_restores_the_band_and_removes_what_lies_above():
    """On a 64x64 grid with a training band of 16 modes: modes below 8 get the plain Wiener gain,
    modes from 16 on are zeroed, modes between get the gain times the taper."""
    op = HeatKernelOperator(width=1 / 64, band_taper=(0.5, 1.0))
    x = torch.randn(1, 1, 64, 64, dtype=torch.float64)
    m = op.multipliers((64, 64))
    plain = m / (m**2 + op.inverse_snr**2)
    taper = band_taper(64, 8.0, 16.0)
    got = _coefficients(op.wiener(x, band=16)) / _coefficients(x)
    torch.testing.assert_close(got[0, 0], plain * taper[:, None] * taper[None, :], rtol=1e-6, atol=1e-9)
    assert torch.allclose(got[0, 0, :8, :8], plain[:8, :8]) and torch.all(got[0, 0, 16:, :].abs() < 1e-9)
    # without a band (or with band_taper=None) it is ∞-Diff's filter
    torch.testing.assert_close((_coefficients(op.wiener(x)) / _coefficients(x))[0, 0], plain, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(HeatKernelOperator(width=1 / 64, band_taper=None).wiener(x, band=16), op.wiener(x))


def test_display_does_not_amplify_errors_above_the_training_band():
    """The mechanism of the speckles: a clean estimate T x0 + e with white error e on a grid 4x the
    training one. The plain Wiener filter multiplies e's modes up to 1/(2 eps) = 10 times (its norm
    about 2.8 times here); the band-limited one keeps it below its size in the estimate while
    restoring the in-band signal."""
    torch.manual_seed(0)
    op = HeatKernelOperator(width=1 / 64)
    grid, band = (128, 128), 32
    # a smooth in-band signal: low DCT modes only
    coef = torch.zeros(1, 1, *grid, dtype=torch.float64)
    coef[..., :8, :8] = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    cy, cx = dct_matrix(grid[0]), dct_matrix(grid[1])
    x0 = cy.T @ coef @ cx
    error = 0.01 * torch.randn(1, 1, *grid, dtype=torch.float64)
    estimate = op.apply(x0) + error
    plain = op.wiener(estimate) - op.wiener(op.apply(x0))
    limited = op.wiener(estimate, band=band) - op.wiener(op.apply(x0), band=band)
    assert float(plain.norm() / error.norm()) > 2.5
    assert float(limited.norm() / error.norm()) < 1.0
    # and the signal comes back within the band (the error of the restored image is small)
    assert float((op.wiener(op.apply(x0), band=band) - x0).norm() / x0.norm()) < 0.02


def test_plain_diffusion_display_ignores_the_band():
    op = HeatKernelOperator(width=0.0)
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(op.wiener(x, band=4), x / (1 + op.inverse_snr**2))


def test_band_taper_is_validated():
    with pytest.raises(ValueError, match="band_taper"):
        HeatKernelOperator(band_taper=(1.0, 0.5))
