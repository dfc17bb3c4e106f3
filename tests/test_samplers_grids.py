"""Samplers off the training grid against closed forms: the full covariance, not only the
per-pixel moments.

The data is a resolution-free Gaussian field (DCT variances fixed per continuous mode, see
``gaussian_oracle.field_spectrum``), so a finer or wider grid samples the same field, and the
exact posterior-mean denoiser is a gain per DCT mode (``field_oracle_model_fn``). Every operator
here is diagonal in the DCT basis, so the covariance of the samples ``T x0`` is diagonal there
with variances ``T_k^2 S_k``: comparing the samples' power per band of modes with that compares
their spatial covariance. A sampler that draws white noise where mollified noise belongs keeps
the per-pixel mean and variance close (the high modes carry little of either) but puts 1.5 to
500 times the power into the bands above the lowest (measured when this test was written), so
the per-band check fails on it where the per-pixel tests of ``test_samplers.py`` pass.
"""

from __future__ import annotations

import math

import pytest
import torch
from gaussian_oracle import expected_mode_power, field_oracle_model_fn, field_spectrum, mode_power

from lightning_infdiff.operators import HeatKernelOperator, IdentityOperator
from lightning_infdiff.processes import GaussianProcess
from lightning_infdiff.samplers import sample
from lightning_infdiff.schedules import CosineSchedule

MU, S, LENGTH = 0.2, 0.5, 0.1
SEEDS = list(range(1000))
#: band edges in continuous mode index sqrt(k_y^2 + k_x^2)
EDGES = (1.0, 2.0, 3.0, 4.0, 6.0, 100.0)
#: relative tolerance per band: sampling noise (a few % for 1,000 samples) plus the samplers'
#: discretisation (DDPM at 100 steps loses up to 15% of the variance in a band)
TOL = 0.25


def band_powers(power: torch.Tensor) -> torch.Tensor:
    h, w = power.shape
    k = torch.sqrt(torch.arange(h, dtype=torch.float64)[:, None] ** 2 + torch.arange(w, dtype=torch.float64)[None, :] ** 2)
    return torch.stack([power[(k >= a) & (k < b)].sum() for a, b in zip(EDGES[:-1], EDGES[1:], strict=True)])


CASES = [
    ("mollified", (16, 16), "ddpm", {}, 100),
    ("mollified", (16, 16), "ddim", {"eta": 1.0}, 100),
    ("mollified", (16, 16), "dpmpp_2m", {}, 25),
    ("mollified", (8, 16), "ddim", {"eta": 1.0}, 100),
    ("mollified", (8, 16), "dpmpp_2m", {}, 25),
    ("mollified", (16, 8), "ddim", {}, 50),
    ("plain", (16, 16), "ddpm", {}, 100),
]


@pytest.mark.parametrize("op_name,grid,sampler,kw,steps", CASES, ids=lambda v: str(v))
def test_samples_have_the_fields_covariance_on_finer_and_wider_grids(op_name, grid, sampler, kw, steps):
    op = HeatKernelOperator(width=1 / 8) if op_name == "mollified" else IdentityOperator()
    proc = GaussianProcess(CosineSchedule(), op, "v")
    spectrum = field_spectrum(grid, S, LENGTH)
    fn = field_oracle_model_fn(proc, MU, spectrum, grid)
    x = sample(proc, None, grid, SEEDS, channels=1, steps=steps, sampler=sampler, clip="none", model_fn=fn, **kw)
    # the mean: the image average has variance S_00 / (H W) per sample
    mean_std = math.sqrt(float(spectrum[0, 0]) / (grid[0] * grid[1]) / len(SEEDS))
    assert abs(float(x.mean()) - MU) < 4 * mean_std
    got = band_powers(mode_power(x, MU))
    want = band_powers(expected_mode_power(proc, spectrum, grid))
    rel = (got - want) / want
    assert bool((rel.abs() < TOL).all()), [round(float(r), 3) for r in rel]


def test_the_field_is_the_same_on_every_grid():
    """The oracle's premise: the field's pointwise variance does not depend on the grid."""
    variances = [float(field_spectrum(g, S, LENGTH).sum()) / (g[0] * g[1]) for g in ((8, 8), (16, 16), (8, 16), (32, 32))]
    assert max(variances) / min(variances) < 1.02
