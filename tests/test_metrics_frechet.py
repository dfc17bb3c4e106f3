"""Fréchet distance: closed forms, torchmetrics agreement, streaming statistics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from lightning_infdiff.metrics.frechet import (
    FeatureStats,
    FrechetDistance,
    frechet_distance,
    gaussian_stats,
)


class Passthrough(nn.Module):
    """'Images' are already features."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def random_spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


def test_one_dimensional_closed_form():
    # d^2 = (m1 - m2)^2 + (s1 - s2)^2 for N(m1, s1^2), N(m2, s2^2)
    d = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[0.25]]))
    assert d == pytest.approx(3.0**2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_diagonal_closed_form():
    a, b = torch.tensor([1.0, 9.0, 0.0]), torch.tensor([4.0, 1.0, 2.0])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_non_commuting_matches_scipy_sqrtm():
    s1, s2 = random_spd(6, 1), random_spd(6, 2)
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    expected = 6.0 + float(np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_scaled_covariance_closed_form():
    # S2 = c^2 S1 -> Tr((S1 S2)^1/2) = c Tr(S1) -> d^2 = (1 - c)^2 Tr(S1)
    s1 = random_spd(5, 3)
    z = torch.zeros(5, dtype=torch.float64)
    assert frechet_distance(z, s1, z, 9.0 * s1) == pytest.approx(4.0 * float(s1.trace()), rel=1e-10)
    assert frechet_distance(z, s1, z, s1) == pytest.approx(0.0, abs=1e-10)


def test_samples_of_two_gaussians_approach_closed_form():
    g = torch.Generator().manual_seed(0)
    d, n = 4, 200_000
    s1, s2 = random_spd(d, 4), random_spd(d, 5)
    mu2 = torch.tensor([0.5, -0.5, 0.0, 1.0], dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    y = torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s2).T + mu2
    exact = frechet_distance(torch.zeros(d), s1, mu2, s2)
    empirical = frechet_distance(*gaussian_stats(x), *gaussian_stats(y))
    assert empirical == pytest.approx(exact, rel=0.02)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))


def test_streaming_stats_equal_batch_stats():
    x = torch.randn(101, 7, dtype=torch.float64)
    stats = FeatureStats.empty(7)
    for chunk in x.split(13):
        stats.update(chunk)
    assert stats.n == 101
    torch.testing.assert_close(stats.mean, x.mean(0))
    torch.testing.assert_close(stats.cov, torch.cov(x.T))
    again = FeatureStats.from_dict(stats.to_dict())
    torch.testing.assert_close(again.cov, stats.cov)


def test_agrees_with_torchmetrics_fid_on_the_same_features():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(300, 8, generator=g)
    fake = torch.randn(250, 8, generator=g) * 1.3 + 0.2
    tm = FrechetInceptionDistance(feature=Passthrough(8))
    tm.update(real, real=True)
    tm.update(fake, real=False)
    ours = frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
    assert float(tm.compute()) == pytest.approx(ours, rel=1e-4)
    # our torchmetrics subclass, with and without a fixed reference
    fd = FrechetDistance(Passthrough(8))
    fd.update(real, real=True)
    fd.update(fake, real=False)
    assert float(fd.compute()) == pytest.approx(ours, rel=1e-9)
    ref = FeatureStats.empty(8)
    ref.update(real)
    fixed = FrechetDistance(Passthrough(8), reference=ref)
    for chunk in fake.split(64):
        fixed.update(chunk, real=False)
    assert float(fixed.compute()) == pytest.approx(ours, rel=1e-9)
    fixed.reset()  # resets the generated side only; the reference stays
    fixed.update(real, real=False)
    assert float(fixed.compute()) == pytest.approx(0.0, abs=1e-9)
