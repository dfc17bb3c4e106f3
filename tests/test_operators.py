import math

import pytest
import torch

from lightning_infdiff.operators import (
    HeatKernelOperator,
    IdentityOperator,
    build_operator,
    dct_matrix,
)


def test_dct_is_orthonormal():
    for n in (2, 7, 16):
        c = dct_matrix(n)
        assert torch.allclose(c @ c.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("n", [16, 32])
def test_dct_cosines_are_eigenvectors(n):
    """T cos(pi k (i+1/2)/N) = exp(-(pi k l)^2 / 2) cos(...) on an N x N grid, l = width."""
    width = 1.5 / n
    op = HeatKernelOperator(width=width)
    i = torch.arange(n, dtype=torch.float64)
    for ky, kx in [(0, 0), (1, 0), (0, 3), (2, 5), (n - 1, 1)]:
        mode = torch.cos(math.pi * ky * (i[:, None] + 0.5) / n) * torch.cos(math.pi * kx * (i[None] + 0.5) / n)
        out = op.apply(mode[None, None])[0, 0]
        lam = math.exp(-((math.pi * width) ** 2) * (ky**2 + kx**2) / 2)
        assert torch.allclose(out, lam * mode, atol=1e-12)


def test_non_square_blur_is_isotropic_in_domain_units_on_either_canvas():
    """One geometry (design notes, section 6): the blur has std ``width`` domain units on both axes.
    On a stretch 20x40 grid (the unit square, non-square pixels) that is 1 and 2 pixels; on a wide
    one (square pixels, a 1 x 2 window) 1 pixel on both axes, and the DCT sees a twice wider window."""
    from lightning_infdiff.coords import Grid

    op = HeatKernelOperator(width=0.05)
    assert op.axis_std((20, 40)) == pytest.approx((0.05, 0.05)) and op.pixels((20, 40)) == pytest.approx((1.0, 2.0))
    wide = Grid(20, 40, "wide")
    assert op.axis_std(wide) == pytest.approx((0.05, 0.025)) and op.pixels(wide) == pytest.approx((1.0, 1.0))
    assert op.at("wide").pixels((20, 40)) == pytest.approx((1.0, 1.0))  # bound: plain shapes are wide
    assert op.pixels((20, 20)) == op.pixels(Grid(20, 20, "wide"))


def test_self_adjoint_and_preserves_constants():
    op = HeatKernelOperator(width=0.08)
    x = torch.randn(3, 12, 10, dtype=torch.float64)
    y = torch.randn(3, 12, 10, dtype=torch.float64)
    assert torch.allclose((op.apply(x) * y).sum(), (x * op.apply(y)).sum())
    const = torch.full((1, 12, 10), 0.7, dtype=torch.float64)
    assert torch.allclose(op.apply(const), const)


def test_zero_width_is_identity():
    x = torch.randn(2, 3, 9, 11)
    op = HeatKernelOperator(width=0.0)
    assert torch.equal(op.apply(x), x)
    assert op.noise_scale((9, 11)) == 1.0
    assert torch.equal(op.noise(x), x)


def test_exact_inverse_and_wiener():
    op = HeatKernelOperator(width=0.5 / 16, inverse_snr=0.05)
    x = torch.randn(2, 16, 16, dtype=torch.float64)
    assert torch.allclose(op.inverse(op.apply(x)), x, atol=1e-9)
    # Wiener filter on DCT coefficients: m / (m^2 + eps^2) times the blurred coefficient
    c = dct_matrix(16)
    m = op.multipliers((16, 16))
    coef = c @ x @ c.T
    expect = c.T @ (coef * m * m / (m**2 + 0.05**2)) @ c
    assert torch.allclose(op.wiener(op.apply(x)), expect, atol=1e-10)
    # the Wiener estimate is closer to x than the blurred field
    assert (op.wiener(op.apply(x)) - x).norm() < (op.apply(x) - x).norm()


@pytest.mark.parametrize("normalise", [True, False])
def test_noise_pointwise_variance_constant_across_resolutions(normalise):
    """Pointwise variance of c T xi at 32, 64 and 128 agrees within 2 %."""
    op = HeatKernelOperator(width=1.0 / 32, normalise_noise=normalise, reference=32)
    gen = torch.Generator().manual_seed(0)
    variances = {}
    for n in (32, 64, 128):
        # the same number of images at each size: the blur spans the same fraction of the
        # image, so each image holds the same number of effectively independent values
        white = torch.randn(800, 1, n, n, generator=gen)
        variances[n] = op.noise(white).var().item()
    ref = variances[64]
    for v in variances.values():
        assert abs(v / ref - 1) < 0.02, variances
    # closed form of the mean pointwise variance: c^2 sum_k m_k^2 / (H W)
    m = op.multipliers((64, 64))
    analytic = op.noise_scale((64, 64)) ** 2 * float((m**2).sum()) / 64**2
    assert ref == pytest.approx(analytic, rel=0.02)
    if normalise:
        assert analytic == pytest.approx(1.0, abs=1e-12)
    else:  # about 1 / (4 pi) (a 1-pixel Gaussian) plus the reflective-boundary share
        assert 1 / (4 * math.pi) < analytic < 1.2 / (4 * math.pi)


def test_fp32_under_autocast():
    op = HeatKernelOperator(width=0.05)
    x = torch.randn(1, 2, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = op.apply(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, op.apply(x))


def test_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        HeatKernelOperator(width=-0.1)
    with pytest.raises(ValueError, match="non-negative"):
        HeatKernelOperator(width=float("nan"))
    op = HeatKernelOperator(width=0.1)
    with pytest.raises(ValueError, match="NaN"):
        op.apply(torch.tensor([[float("nan"), 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="at least 2x2"):
        op.apply(torch.zeros(1, 1, 5))
    with pytest.raises(ValueError, match="NaN"):
        IdentityOperator().apply(torch.full((3, 3), float("inf")))
    with pytest.raises(ValueError, match="unknown noise operator"):
        build_operator("gauss")
    with pytest.raises(ValueError, match="inverse_snr"):
        HeatKernelOperator(inverse_snr=0)
