"""Fréchet distance between Gaussian fits of feature sets, and its torchmetrics form.

The Fréchet (2-Wasserstein) distance between ``N(mu1, S1)`` and ``N(mu2, S2)`` is
(Dowson & Landau 1982; used as FID by Heusel et al. 2017, eq. 6, and as FID_CLIP by
Kynkäänniemi et al. 2023)::

    d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr((S1^{1/2} S2 S1^{1/2})^{1/2})

The last trace equals ``Tr((S1 S2)^{1/2})``; it is computed here in fp64 from the eigenvalues
of the symmetric positive semi-definite matrix ``S1^{1/2} S2 S1^{1/2}`` (``eigh``, no complex
round-off, no iterative ``sqrtm``).

:class:`FrechetDistance` is torchmetrics' ``FrechetInceptionDistance`` with any feature module
(so its sums synchronise across DDP ranks) plus an optional fixed reference (cached statistics
of the real data), against which only the generated side is accumulated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

__all__ = ["FeatureStats", "frechet_distance", "gaussian_stats", "FrechetDistance"]


def _psd_sqrt(mat: Tensor) -> Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative round-off eigenvalues -> 0)."""
    vals, vecs = torch.linalg.eigh(mat)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Squared Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` in fp64.

    Args:
        mu1, mu2: means ``(D,)``.
        sigma1, sigma2: covariances ``(D, D)`` (symmetric PSD).

    Returns:
        ``|mu1 - mu2|^2 + Tr(S1 + S2) - 2 Tr((S1^{1/2} S2 S1^{1/2})^{1/2})`` as a Python float.
    """
    mu1, mu2 = mu1.double().flatten(), mu2.double().flatten()
    s1, s2 = sigma1.double(), sigma2.double()
    d = mu1.numel()
    if mu2.numel() != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes disagree: mu1 {tuple(mu1.shape)}, mu2 {tuple(mu2.shape)}, "
            f"sigma1 {tuple(s1.shape)}, sigma2 {tuple(s2.shape)}"
        )
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    r1 = _psd_sqrt(s1)
    inner = r1 @ s2 @ r1
    tr_sqrt = torch.linalg.eigvalsh(0.5 * (inner + inner.T)).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2.0 * tr_sqrt
    return float(value.clamp_min(0.0))


@dataclass
class FeatureStats:
    """Streaming first and second moments of features, in fp64.

    Holds ``n``, ``sum = Σ f`` and ``outer = Σ f fᵀ``; the mean is ``sum / n`` and the
    (unbiased) covariance ``(outer - n·mean meanᵀ) / (n - 1)``, as in torchmetrics' FID.
    """

    n: int
    sum: Tensor
    outer: Tensor

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        """Zero statistics of ``dim``-dimensional features."""
        return cls(0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))

    def update(self, features: Tensor) -> None:
        """Add a batch of features ``(B, D)``."""
        f = features.detach().double().cpu().reshape(features.shape[0], -1)
        if f.shape[1] != self.sum.numel():
            raise ValueError(f"FeatureStats: expected {self.sum.numel()}-d features, got {f.shape[1]}")
        self.n += int(f.shape[0])
        self.sum += f.sum(0)
        self.outer += f.T @ f

    @property
    def mean(self) -> Tensor:
        """Mean feature ``(D,)``."""
        return self.sum / max(self.n, 1)

    @property
    def cov(self) -> Tensor:
        """Unbiased covariance ``(D, D)`` (needs ``n >= 2``)."""
        if self.n < 2:
            raise ValueError(f"FeatureStats: a covariance needs at least 2 samples, got {self.n}")
        m = self.mean
        return (self.outer - self.n * torch.outer(m, m)) / (self.n - 1)

    def to_dict(self) -> dict[str, Tensor | int]:
        """Plain data for ``torch.save`` (loads with ``weights_only=True``)."""
        return {"n": self.n, "sum": self.sum, "outer": self.outer}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureStats:
        """Inverse of :meth:`to_dict`."""
        return cls(int(data["n"]), data["sum"].double(), data["outer"].double())


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance (fp64) of features ``(N, D)``."""
    stats = FeatureStats.empty(features.shape[1])
    stats.update(features)
    return stats.mean, stats.cov


class FrechetDistance(FrechetInceptionDistance):
    """torchmetrics FID with any feature module and an optional cached reference.

    ``update(images, real=False)`` feeds generated images (the format the feature module
    expects, uint8 ``(B, C, H, W)`` for the extractors of this package); torchmetrics sums the
    feature moments and all-reduces them across DDP ranks in ``compute``. With a ``reference``
    (:class:`FeatureStats` of the real data) ``compute`` compares the synchronised generated
    moments against it; without one it compares against the ``real=True`` updates, exactly as
    torchmetrics does, but with :func:`frechet_distance`'s fp64 eigen-decomposition.

    Args:
        feature: feature module mapping an image batch to ``(B, D)``; should set ``num_features``.
        reference: statistics of the real images (e.g. from
            :func:`~lightning_infdiff.metrics.reference.reference_stats`).
    """

    def __init__(self, feature: nn.Module, reference: FeatureStats | None = None, **kwargs: object) -> None:
        super().__init__(feature=feature, reset_real_features=reference is None, normalize=False, **kwargs)
        self.reference = reference

    def set_reference(self, reference: FeatureStats | None) -> None:
        """Use ``reference`` as the real side (``None``: use ``real=True`` updates)."""
        self.reference = reference

    def _fake_stats(self) -> FeatureStats:
        return FeatureStats(
            int(self.fake_features_num_samples), self.fake_features_sum.cpu(), self.fake_features_cov_sum.cpu()
        )

    def compute(self) -> Tensor:
        """The squared Fréchet distance (a 0-d fp64 tensor) between the two feature sets."""
        fake = self._fake_stats()
        if self.reference is not None:
            real = self.reference
        else:
            real = FeatureStats(
                int(self.real_features_num_samples), self.real_features_sum.cpu(), self.real_features_cov_sum.cpu()
            )
        if fake.n < 2 or real.n < 2:
            raise RuntimeError(f"FrechetDistance needs >= 2 samples on each side, got {real.n} real and {fake.n} generated")
        return torch.tensor(frechet_distance(real.mean, real.cov, fake.mean, fake.cov), dtype=torch.float64)
