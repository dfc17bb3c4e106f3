"""Which pixels of each example the denoiser sees during training.

∞-Diff trains on a random subset of the pixel grid (section 3.3): at rate ``r`` each example
keeps ``N = floor(H*W / r)`` of its pixels, drawn uniformly without replacement. Strategies:

* ``"uniform"`` (default, as in ∞-Diff): an independent subset per example.
* ``"shared"``: one subset for the whole batch, so sparse layers can share neighbour
  structure (one neighbour search per batch instead of per example).
* ``"sobol"`` / ``"halton"``: scrambled quasi-Monte-Carlo points in ``[0, 1)^2`` (independent
  scrambling per example) mapped to the pixel containing them; a pixel hit twice is kept once
  and further points of the sequence fill up to ``N`` (for power-of-two grids and counts the
  first ``N`` Sobol points of a (0, m, 2)-net never share a pixel). They cover the grid more
  evenly than uniform draws (the ∞-Diff sampling ablation).

Indices are flat row-major (see :mod:`lightning_infdiff.coords`) and sorted within each
example, which keeps gathers cache-friendly and makes batches easy to compare.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.stats import qmc
from torch import Tensor

__all__ = ["CoordinateSampler", "Strategy"]

Strategy = Literal["uniform", "shared", "sobol", "halton"]
_STRATEGIES = ("uniform", "shared", "sobol", "halton")

class CoordinateSampler:
    """Draws the flat indices of the training points.

    Args:
        rate: subsampling rate ``r``: keep ``floor(H*W / r)`` pixels per example (1 = all
            pixels, ∞-Diff uses 4). Ignored when ``num_points`` is set.
        num_points: fixed number of points per example (must fit the smallest grid).
        strategy: ``"uniform"``, ``"shared"``, ``"sobol"`` or ``"halton"`` (module docs).
        jitter: sub-pixel coordinate jitter (SIID: "improved quality and generalisation
            markedly"): every training point's coordinates move by ``U(-1/2, 1/2)`` of a pixel
            per axis (:meth:`offsets`). The values stay those of the pixel, which still contains
            the moved coordinates, so lattice layers (sparse convolutions, grid scatter) see the
            same pixel; coordinate inputs (Fourier features, kNN and read-back positions) move.
    """

    def __init__(
        self,
        rate: int | None = 4,
        num_points: int | None = None,
        strategy: Strategy = "uniform",
        jitter: bool = False,
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
        if num_points is None:
            if rate is None or int(rate) != rate or rate < 1:
                raise ValueError(
                    f"subsampling rate must be an integer >= 1 (1, 2, 4, 8, 16, ...), got {rate!r}"
                )
        elif int(num_points) != num_points or num_points < 1:
            raise ValueError(f"num_points must be a positive integer, got {num_points!r}")
        self.rate = None if num_points is not None else int(rate)  # type: ignore[arg-type]
        self.num_points = None if num_points is None else int(num_points)
        self.strategy = strategy
        self.jitter = bool(jitter)

    def offsets(self, n: int, seeds: list[int]) -> Tensor | None:
        """Sub-pixel offsets ``(B, N, 2)`` in pixels, in ``(-1/2, 1/2)``, one stream per example
        (``None`` without jitter)."""
        if not self.jitter:
            return None
        half = 0.5 * (1.0 - 1e-6)  # strictly inside the pixel: the containing pixel never changes
        rows = [np.random.default_rng([int(s), 7]).uniform(-half, half, size=(n, 2)) for s in seeds]
        return torch.from_numpy(np.stack(rows)).float()

    @property
    def is_full(self) -> bool:
        """``True`` when every pixel is kept (rate 1): batches then carry ``indices=None``."""
        return self.rate == 1

    def points_for(self, grid: tuple[int, int]) -> int:
        """Number of points ``N`` on a grid, with an error that gives the numbers if impossible."""
        h, w = grid
        total = h * w
        if self.num_points is not None:
            if self.num_points > total:
                raise ValueError(
                    f"num_points={self.num_points} is larger than the {h}x{w} grid ({total} pixels)"
                )
            return self.num_points
        n = total // self.rate  # type: ignore[operator]
        if n < 1:
            raise ValueError(
                f"subsampling rate {self.rate} leaves {total}/{self.rate} < 1 point on the {h}x{w} grid"
            )
        return n

    def sample(self, grid: tuple[int, int], seeds: list[int], batch_seed: int) -> Tensor | None:
        """Indices ``(B, N)`` (int64, sorted per row), or ``None`` at rate 1.

        Args:
            grid: ``(H, W)``.
            seeds: one seed per example (used by per-example strategies).
            batch_seed: seed of the batch (used by ``"shared"``).
        """
        n = self.points_for(grid)
        total = grid[0] * grid[1]
        if self.is_full or (self.num_points is not None and n == total):
            return None
        if self.strategy == "shared":
            row = np.sort(np.random.default_rng(batch_seed).choice(total, n, replace=False))
            return torch.from_numpy(row).long().unsqueeze(0).expand(len(seeds), n).contiguous()
        rows = [self._one(grid, n, np.random.default_rng(s)) for s in seeds]
        return torch.from_numpy(np.stack(rows)).long()

    def _one(self, grid: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
        total = grid[0] * grid[1]
        if self.strategy == "uniform":
            return np.sort(rng.choice(total, n, replace=False))
        return np.sort(qmc_indices(grid, n, rng, self.strategy))


def _engine(kind: str, rng: np.random.Generator) -> qmc.QMCEngine:
    cls = qmc.Sobol if kind == "sobol" else qmc.Halton
    try:
        return cls(d=2, scramble=True, rng=rng)
    except TypeError:  # scipy < 1.15 calls it ``seed``
        return cls(d=2, scramble=True, seed=rng)


def qmc_indices(
    grid: tuple[int, int], n: int, rng: np.random.Generator, kind: str = "sobol"
) -> np.ndarray:
    """``n`` distinct pixel indices from a scrambled Sobol or Halton sequence.

    Points are mapped to the pixel that contains them; repeats are dropped and the sequence
    continues until ``n`` distinct pixels are hit (after 8 rounds any shortfall is filled
    uniformly from the pixels not yet hit, so the call always terminates).

    Returns:
        Unsorted ``int64`` array of ``n`` unique flat row-major indices, in sequence order.
    """
    h, w = grid
    engine = _engine(kind, rng)
    chosen: list[np.ndarray] = []
    seen = np.zeros(h * w, dtype=bool)
    have = 0
    m = max(0, int(np.ceil(np.log2(n))))
    for round_ in range(8):
        pts = (
            engine.random_base2(m)
            if (kind == "sobol" and round_ == 0)
            else engine.random(max(n, 2**m))
        )
        rows = np.minimum((pts[:, 0] * h).astype(np.int64), h - 1)
        cols = np.minimum((pts[:, 1] * w).astype(np.int64), w - 1)
        idx = rows * w + cols
        _, first = np.unique(idx, return_index=True)
        idx = idx[np.sort(first)]  # first occurrence of each pixel, in sequence order
        idx = idx[~seen[idx]][: n - have]
        seen[idx] = True
        chosen.append(idx)
        have += len(idx)
        if have == n:
            return np.concatenate(chosen)
    rest = np.flatnonzero(~seen)
    chosen.append(rng.choice(rest, n - have, replace=False))
    return np.concatenate(chosen)
