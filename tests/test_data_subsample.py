"""Coordinate subsampling: uniqueness, uniformity (chi-square), QMC evenness, error messages."""

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.stats import qmc

from lightning_infdiff.batch import FieldBatch
from lightning_infdiff.coords import index_to_coords
from lightning_infdiff.data import CoordinateSampler, FieldDataModule, GaussianBlobs, qmc_indices
from lightning_infdiff.data.seeding import derive_seed


def _chi2_pvalue(counts: np.ndarray, draws_per_example: int, examples: int) -> float:
    """p-value of "every pixel equally likely" for per-example draws without replacement.

    Each pixel count is a sum of ``examples`` Bernoulli(p) indicators, p = N / (H W), so its
    variance is ``E (1 - p)``; dividing the Pearson statistic by ``(1 - p)`` restores the
    chi-square(HW - 1) null distribution (the plain statistic would be too small by that
    factor, making the test unable to fail).
    """
    cells = counts.size
    p = draws_per_example / cells
    expected = examples * p
    stat = float(((counts - expected) ** 2).sum() / (expected * (1 - p)))
    return float(stats.chi2.sf(stat, cells - 1))


@pytest.mark.parametrize("strategy", ["uniform", "sobol", "halton"])
@pytest.mark.parametrize("grid", [(16, 16), (24, 24), (12, 20)])
def test_indices_unique_sorted_in_range(strategy, grid):
    sampler = CoordinateSampler(rate=4, strategy=strategy)
    idx = sampler.sample(grid, list(range(16)), batch_seed=7)
    n = grid[0] * grid[1] // 4
    assert idx.shape == (16, n) and idx.dtype == torch.int64
    for row in idx:
        assert len(torch.unique(row)) == n, "duplicate pixel in one example"
    assert int(idx.min()) >= 0 and int(idx.max()) < grid[0] * grid[1]
    assert bool((idx[:, 1:] > idx[:, :-1]).all()), "indices are sorted per example"


def test_chi_square_uniform_over_many_batches():
    """Through the whole DataModule: every pixel is drawn about equally often."""
    dm = FieldDataModule(GaussianBlobs(length=1100), resolution=16, batch_size=50, subsample_rate=4)
    dm.setup()
    loader = dm.train_dataloader()
    counts = np.zeros(256)
    examples = 0
    for _ in range(2):  # two epochs, 40 batches of 50
        for batch in loader:
            counts += np.bincount(batch.indices.reshape(-1).numpy(), minlength=256)
            examples += len(batch)
    assert examples == 2000
    assert counts.sum() == examples * 64
    assert _chi2_pvalue(counts, 64, examples) > 1e-3


def test_chi_square_detects_a_biased_sampler():
    """The same test must fail for a sampler that favours half of the pixels by 15%."""
    rng = np.random.default_rng(0)
    weights = np.ones(256)
    weights[:128] = 1.15
    weights /= weights.sum()
    counts = np.zeros(256)
    for _ in range(2000):
        counts += np.bincount(rng.choice(256, 64, replace=False, p=weights), minlength=256)
    assert _chi2_pvalue(counts, 64, 2000) < 1e-6


def test_fixed_seed_reproducible_and_seeds_differ():
    sampler = CoordinateSampler(rate=8)
    seeds = [derive_seed(0, i) for i in range(8)]
    a = sampler.sample((32, 32), seeds, 1)
    b = sampler.sample((32, 32), seeds, 1)
    assert torch.equal(a, b)
    c = sampler.sample((32, 32), [derive_seed(1, i) for i in range(8)], 1)
    assert not torch.equal(a, c)
    assert len({tuple(r.tolist()) for r in a}) == 8, "examples of a batch get different subsets"


def test_shared_strategy_same_subset_for_the_batch():
    sampler = CoordinateSampler(rate=4, strategy="shared")
    idx = sampler.sample((16, 16), list(range(6)), batch_seed=3)
    assert all(torch.equal(idx[0], row) for row in idx)
    other = sampler.sample((16, 16), list(range(6)), batch_seed=4)
    assert not torch.equal(idx[0], other[0])


def test_rate_one_and_full_num_points_give_full_grid():
    assert CoordinateSampler(rate=1).sample((8, 8), [0, 1], 0) is None
    assert CoordinateSampler(num_points=64).sample((8, 8), [0, 1], 0) is None
    assert CoordinateSampler(num_points=10).sample((8, 8), [0, 1], 0).shape == (2, 10)


@pytest.mark.parametrize("kind", ["sobol", "halton"])
def test_qmc_no_duplicates_and_lower_discrepancy(kind):
    grid = (32, 32)
    uni, low = [], []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        q = qmc_indices(grid, 256, rng, kind)
        assert len(np.unique(q)) == 256
        u = rng.choice(1024, 256, replace=False)
        coords_q = index_to_coords(torch.from_numpy(q), grid).double().numpy()
        coords_u = index_to_coords(torch.from_numpy(u), grid).double().numpy()
        low.append(qmc.discrepancy(coords_q))
        uni.append(qmc.discrepancy(coords_u))
    # measured here: uniform ~1.3e-3, Sobol ~1.8e-4, Halton ~2.1e-4 (centred L2 discrepancy)
    assert np.mean(low) < 0.5 * np.mean(uni)
    assert max(low) < np.median(uni)


def test_qmc_fills_up_when_the_grid_is_almost_full():
    q = qmc_indices((10, 10), 99, np.random.default_rng(0), "sobol")
    assert len(np.unique(q)) == 99


def test_rate_leaving_no_points_names_the_numbers():
    with pytest.raises(ValueError, match=r"rate 16 leaves 4/16 < 1 point on the 2x2 grid"):
        CoordinateSampler(rate=16).points_for((2, 2))
    with pytest.raises(ValueError, match=r"rate 8 leaves 4/8"):
        FieldDataModule(GaussianBlobs(length=8), resolution=2, subsample_rate=8)


def test_too_many_points_names_the_numbers():
    with pytest.raises(
        ValueError, match=r"num_points=2000 is larger than the 32x32 grid \(1024 pixels\)"
    ):
        FieldDataModule(GaussianBlobs(length=8), resolution=32, num_points=2000)
    with pytest.raises(
        ValueError, match=r"num_points=300 is larger than the 16x16 grid \(256 pixels\)"
    ):
        FieldDataModule(
            GaussianBlobs(length=8), resolution=32, train_resolutions=[16, 32], num_points=300
        )


@pytest.mark.parametrize("rate", [0, -2, 2.5])
def test_bad_rate_rejected(rate):
    with pytest.raises(ValueError, match="subsampling rate must be an integer"):
        CoordinateSampler(rate=rate)


def test_bad_strategy():
    with pytest.raises(ValueError, match="strategy must be one of"):
        CoordinateSampler(strategy="poisson")


def test_jitter_moves_coordinates_inside_their_pixel_and_only_in_training():
    """Offsets in (-1/2, 1/2) pixel per axis, reproducible per example seed; the jittered
    coordinates still fall in the sampled pixel; validation batches carry none."""
    from lightning_infdiff.coords import coords_to_index

    dm = FieldDataModule(GaussianBlobs(length=24), resolution=8, batch_size=4, subsample_rate=2, jitter=True,
                         val_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch.offsets is not None and batch.offsets.shape == (4, 32, 2)
    assert float(batch.offsets.abs().max()) < 0.5 and float(batch.offsets.std()) > 0.2
    assert torch.equal(coords_to_index(batch.coords, batch.grid), batch.indices)
    assert not torch.equal(batch.coords, FieldBatch(batch.image, batch.indices).coords)
    again = next(iter(FieldDataModule(GaussianBlobs(length=24), resolution=8, batch_size=4, subsample_rate=2,
                                      jitter=True, val_size=4).train_dataloader()))
    assert torch.equal(again.offsets, batch.offsets)
    assert next(iter(dm.val_dataloader())).offsets is None
    plain = next(iter(FieldDataModule(GaussianBlobs(length=24), resolution=8, batch_size=4, subsample_rate=2,
                                      val_size=4).train_dataloader()))
    assert plain.offsets is None
