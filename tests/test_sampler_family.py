"""The sampler family (issue 37, item 3) against closed forms.

Gaussian data has an exact denoiser (``gaussian_oracle``), and the probability-flow ODE of
Gaussian data has an exact solution per DCT mode (``gaussian_oracle.field_flow``), so each
sampler is checked for the distribution it draws (mean, variance, spatial covariance per band
of modes) and each deterministic solver for its order of convergence: the error of the final
state against the exact flow map, fitted as ``log(error) ~ -p log(steps)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from gaussian_oracle import (
    expected_mode_power,
    field_denoise,
    field_flow,
    field_oracle_model_fn,
    field_spectrum,
    mode_power,
)
from test_samplers import TinyNet
from test_samplers_grids import band_powers

from lightning_infdiff.operators import HeatKernelOperator
from lightning_infdiff.processes import GaussianProcess
from lightning_infdiff.samplers import (
    SAMPLERS,
    StepInfo,
    make_model_fn,
    rescale_guidance,
    sample,
    sample_ddim,
    sample_euler,
)
from lightning_infdiff.schedules import CosineSchedule

MU, S, LENGTH = 0.2, 0.5, 0.1

# ------------------------------------------------------------------ distribution of the samples

#: (sampler, options, steps): every sampler the issue added, at a step count where its
#: discretisation error is below the sampling noise of 1,000 samples
MOMENT_CASES = [
    ("euler", {}, 100),
    ("heun", {}, 50),
    ("heun", {"s_churn": 20.0, "s_tmin": 0.05, "s_tmax": 50.0}, 40),
    ("dpmpp_3m", {}, 20),
]


@pytest.mark.parametrize("sampler,options,steps", MOMENT_CASES, ids=lambda v: str(v))
def test_new_samplers_draw_the_gaussian_fields_distribution(sampler, options, steps):
    """1,000 samples of a mollified 16x16 Gaussian field: the mean within 4 standard errors, the
    variance (total DCT power) within 8% and the spatial covariance (power per band of modes,
    see ``test_samplers_grids``) within 15% of the data's (sampling noise is a few %)."""
    grid = (16, 16)
    proc = GaussianProcess(CosineSchedule(), HeatKernelOperator(width=1 / 8), "v")
    spectrum = field_spectrum(grid, S, LENGTH)
    fn = field_oracle_model_fn(proc, MU, spectrum, grid)
    seeds = list(range(1000))
    x = sample(proc, None, grid, seeds, channels=1, steps=steps, sampler=sampler, clip="none", model_fn=fn,
               options=options)
    mean_std = math.sqrt(float(spectrum[0, 0]) / (grid[0] * grid[1]) / len(seeds))
    assert abs(float(x.mean()) - MU) < 4 * mean_std
    got, want = mode_power(x, MU), expected_mode_power(proc, spectrum, grid)
    assert abs(float(got.sum() / want.sum()) - 1) < 0.08
    rel = (band_powers(got) - band_powers(want)) / band_powers(want)
    assert bool((rel.abs() < 0.15).all()), [round(float(r), 3) for r in rel]


# ------------------------------------------------------------------ order of convergence

GRID = (8, 8)
LAM_LO, LAM_HI = -10.0, 10.0
STEPS = (8, 16, 32, 64)


def _flow_error(sampler: str, steps: int, options: dict | None = None) -> float:
    """Relative RMS error of the final state against the exact probability-flow map (float64)."""
    spectrum = field_spectrum(GRID, S, LENGTH)
    model = field_denoise(MU, spectrum)
    gen = torch.Generator().manual_seed(0)
    a0, s0 = (math.sqrt(float(torch.sigmoid(torch.tensor(v * LAM_LO)))) for v in (1.0, -1.0))
    x0 = a0 * MU + s0 * torch.randn(16, 1, *GRID, generator=gen, dtype=torch.float64)
    exact = field_flow(x0, LAM_LO, LAM_HI, MU, spectrum)
    lams = torch.linspace(LAM_LO, LAM_HI, steps + 1, dtype=torch.float64)
    x = SAMPLERS[sampler](model, x0, lams, noise=None, **(options or {}))
    return float((x - exact).pow(2).mean().sqrt() / exact.pow(2).mean().sqrt())


def _slope(errors: list[float]) -> float:
    """Least-squares slope of ``-log(error)`` against ``log(steps)``."""
    lx = torch.log(torch.tensor(STEPS, dtype=torch.float64))
    ly = -torch.log(torch.tensor(errors, dtype=torch.float64))
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())


#: (sampler, options, lowest and highest accepted slope). Measured on this grid (uniform in
#: logSNR on [-10, 10], steps 8..64): euler and ddim 0.94, heun 2.14, dpmpp_2m 1.63 (its steps
#: 8 -> 16 are pre-asymptotic; 1.96-2.00 from 16 on), dpmpp_3m 3.9 (faster than third order
#: over these steps: the third-order error term is small here; from about 1e-7 relative error
#: the first-order first step's O(h^2) dominates, so the range stops at 64 steps).
ORDER_CASES = [
    ("euler", {}, 0.85, 1.15),
    ("ddim", {}, 0.85, 1.15),
    ("heun", {}, 1.85, 2.4),
    ("dpmpp_2m", {"lower_order_final": False}, 1.5, 2.3),
    ("dpmpp_3m", {"lower_order_final": False}, 2.8, 4.5),
]


@pytest.mark.parametrize("sampler,options,lo,hi", ORDER_CASES, ids=lambda v: str(v))
def test_deterministic_solvers_converge_at_their_order(sampler, options, lo, hi):
    errors = [_flow_error(sampler, k, options) for k in STEPS]
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert lo < _slope(errors) < hi, (errors, _slope(errors))


def test_heun_beats_euler_at_the_same_network_evaluations():
    """Heun's 32 steps (64 evaluations) against Euler's 64 steps: measured 1.3e-2 vs 3.8e-2.
    (At 8 vs 16 steps Euler still wins: second order pays off once the steps resolve the data.)"""
    heun, euler = _flow_error("heun", 32), _flow_error("euler", 64)
    assert heun < 0.5 * euler, (heun, euler)


# ------------------------------------------------------------------ euler == ddim(eta=0)


def test_euler_is_deterministic_ddim_in_closed_form():
    """``x_e' = x_e + (sigma_e' - sigma_e) n_hat`` with ``x_e = y0_hat + sigma_e n_hat`` is
    ``x' = alpha' y0_hat + sigma' n_hat``: equal step for step (float64 rounding only), here for a
    nonlinear denoiser of vectors, on a non-uniform grid."""
    w = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def model(x, lam):
        a, s = torch.sigmoid(lam).sqrt(), torch.sigmoid(-lam).sqrt()
        y0 = torch.tanh(x @ w) * a + 0.1 * x
        return y0, (x - a * y0) / s

    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lams = torch.tensor([-12.0, -7.5, -3.0, -2.2, 0.0, 1.3, 4.0, 9.0], dtype=torch.float64)
    seen_e, seen_d = [], []
    e = sample_euler(model, x, lams, noise=None, callback=lambda i: seen_e.append(i.x))
    d = sample_ddim(model, x, lams, noise=None, callback=lambda i: seen_d.append(i.x))
    for a, b in zip(seen_e, seen_d, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e, d, rtol=1e-12, atol=1e-12)
    # and not by accident: the first step is exactly alpha' y0 + sigma' n
    y0, n = model(x, lams[0])
    a1, s1 = torch.sigmoid(lams[1]).sqrt(), torch.sigmoid(-lams[1]).sqrt()
    torch.testing.assert_close(seen_e[0], a1 * y0 + s1 * n, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ seeds, grids, hooks

FAMILY = [(name, {}) for name in SAMPLERS] + [("heun", {"s_churn": 5.0})]


@pytest.mark.parametrize("sampler,options", FAMILY, ids=lambda v: str(v))
def test_every_sampler_has_per_sample_seeds(sampler, options):
    """Sample ``i`` of a batch equals the same seed drawn alone, bitwise, and a changed seed
    changes only its own sample."""
    net = TinyNet().eval()
    proc = GaussianProcess(CosineSchedule(), HeatKernelOperator(width=0.1), "v")
    seeds = [11, 12, 13, 14, 15]
    kw = dict(channels=1, steps=5, sampler=sampler, eta=0.5, options=options)
    batch = sample(proc, net, (6, 10), seeds, **kw)
    single = torch.cat([sample(proc, net, (6, 10), [s], **kw) for s in seeds])
    assert torch.equal(batch, single)
    other = sample(proc, net, (6, 10), [99] + seeds[1:], **kw)
    assert torch.equal(other[1:], batch[1:]) and not torch.allclose(other[0], batch[0])


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_forward_jumps_and_callback_for_every_sampler(sampler):
    """A grid with falls (RePaint's jumps): the callback sees every transition once, in order,
    with ``y0`` only on denoising steps, and its returned state is the one carried on."""
    net = TinyNet().eval()
    proc = GaussianProcess(CosineSchedule(), HeatKernelOperator(width=0.1), "v")
    lams = [-10.0, -5.0, 0.0, -3.0, 2.0, 5.0, 1.0, 8.0]
    seen: list[StepInfo] = []

    def cb(info: StepInfo):
        seen.append(info)
        return info.x * 0 if info.index == len(lams) - 2 else None

    out = sample(proc, net, (4, 4), [0, 1], channels=1, sampler=sampler, logsnrs=lams, callback=cb, clip="none")
    assert [i.index for i in seen] == list(range(len(lams) - 1))
    assert [i.y0 is None for i in seen] == [b < a for a, b in zip(lams, lams[1:], strict=False)]
    assert [float(i.logsnr_to) for i in seen] == lams[1:]
    # the last callback zeroed the state: the final denoise sees x = 0
    lam = torch.full((2,), lams[-1])
    zero = torch.zeros(2, 1, 4, 4)
    want, _ = proc.to_y0_noise(make_model_fn(net, (4, 4), process=proc)(zero, lam), zero, lam)
    torch.testing.assert_close(out, want)


# ------------------------------------------------------------------ guidance


def test_guidance_interval_guides_only_inside():
    net = TinyNet(num_classes=3).eval()
    cond = torch.tensor([0, 2, 1])
    x = torch.randn(3, 1, 4, 4)
    lam = torch.tensor([-6.0, 0.5, 7.0])
    c_only = make_model_fn(net, (4, 4), cond)(x, lam)
    guided = make_model_fn(net, (4, 4), cond, guidance_scale=3.0)(x, lam)
    mixed = make_model_fn(net, (4, 4), cond, guidance_scale=3.0, guidance_interval=(-1.0, 2.0))(x, lam)
    torch.testing.assert_close(mixed[1], guided[1])
    assert torch.equal(mixed[0], c_only[0]) and torch.equal(mixed[2], c_only[2])
    assert not torch.allclose(guided[0], c_only[0])
    outside = make_model_fn(net, (4, 4), cond, guidance_scale=3.0, guidance_interval=(8.0, 9.0))(x, lam)
    assert torch.equal(outside, c_only)  # no null branch run at all
    with pytest.raises(ValueError, match="guidance_interval"):
        make_model_fn(net, (4, 4), cond, guidance_scale=3.0, guidance_interval=(2.0, 1.0))
    # through sample(): an interval the grid never enters is conditional-only sampling
    proc = GaussianProcess()
    kw = dict(channels=1, steps=4, cond=cond[:2], sampler="heun")
    never = sample(proc, net, (4, 4), [1, 2], guidance_scale=3.0, guidance_interval=(100.0, 200.0), **kw)
    assert torch.equal(never, sample(proc, net, (4, 4), [1, 2], guidance_scale=1.0, **kw))
    always = sample(proc, net, (4, 4), [1, 2], guidance_scale=3.0, guidance_interval=(-100.0, 100.0), **kw)
    torch.testing.assert_close(always, sample(proc, net, (4, 4), [1, 2], guidance_scale=3.0, **kw))


def test_guidance_rescale():
    """phi = 0 is plain guidance; phi = 1 gives each sample the conditional prediction's std;
    phi in between mixes the two linearly (Lin et al. 2024, eqs. 15-16)."""
    net = TinyNet(num_classes=3).eval()
    cond = torch.tensor([0, 2])
    x = torch.randn(2, 1, 4, 4)
    lam = torch.tensor([0.0, 1.0])
    c_only = make_model_fn(net, (4, 4), cond)(x, lam)
    plain = make_model_fn(net, (4, 4), cond, guidance_scale=5.0)(x, lam)
    assert torch.equal(make_model_fn(net, (4, 4), cond, guidance_scale=5.0, guidance_rescale=0.0)(x, lam), plain)
    full = make_model_fn(net, (4, 4), cond, guidance_scale=5.0, guidance_rescale=1.0)(x, lam)
    torch.testing.assert_close(full.flatten(1).std(1), c_only.flatten(1).std(1))
    assert not torch.allclose(plain.flatten(1).std(1), c_only.flatten(1).std(1), rtol=0.05)
    torch.testing.assert_close(full * plain.flatten(1).std(1).view(-1, 1, 1, 1),
                               plain * c_only.flatten(1).std(1).view(-1, 1, 1, 1))  # a rescaling, per sample
    half = make_model_fn(net, (4, 4), cond, guidance_scale=5.0, guidance_rescale=0.5)(x, lam)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * plain)
    torch.testing.assert_close(rescale_guidance(plain, c_only, 1.0), full)
    with pytest.raises(ValueError, match="guidance_rescale"):
        make_model_fn(net, (4, 4), cond, guidance_scale=5.0, guidance_rescale=1.5)
