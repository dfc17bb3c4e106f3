import math

import pytest
import torch

from lightning_infdiff.schedules import (
    CosineSchedule,
    InterpolatedShiftedSchedule,
    LinearSchedule,
    ShiftedSchedule,
    alpha_sigma,
    build_schedule,
)

T = torch.linspace(0, 1, 1001, dtype=torch.float64)
GRID = (64, 64)
SCHEDULES = [
    CosineSchedule(),
    CosineSchedule(-10, 8),
    LinearSchedule(),
    ShiftedSchedule(CosineSchedule(), 32),
    InterpolatedShiftedSchedule(CosineSchedule(), 16, 128),
]


@pytest.mark.parametrize("sched", SCHEDULES, ids=repr)
def test_strictly_decreasing_and_inverse(sched):
    lam = sched.logsnr(T, GRID)
    assert torch.all(lam[1:] < lam[:-1])
    t_back = sched.t_of_logsnr(lam, GRID)
    assert torch.allclose(t_back, T, atol=1e-9)


def test_alpha_sigma_variance_preserving():
    lam = torch.linspace(-20, 20, 101, dtype=torch.float64)
    a, s = alpha_sigma(lam)
    assert torch.allclose(a**2 + s**2, torch.ones_like(lam))
    assert torch.allclose(torch.log(a**2 / s**2), lam)


def test_cosine_endpoints_and_closed_form():
    sched = CosineSchedule(-12.0, 9.0)
    assert sched.logsnr_max() == pytest.approx(9.0, abs=1e-12)
    assert sched.logsnr_min() == pytest.approx(-12.0, abs=1e-12)
    # without clipping to +-inf the schedule is -2 log tan(pi t / 2): alpha = cos(pi t/2)
    wide = CosineSchedule(-60, 60)
    t = torch.tensor([0.1, 0.25, 0.5, 0.9], dtype=torch.float64)
    a, _ = alpha_sigma(wide.logsnr(t))
    assert torch.allclose(a, torch.cos(math.pi * t / 2), atol=1e-9)


def test_linear_matches_ddpm_betas_exactly_at_knots():
    sched = LinearSchedule(1e-4, 0.02, 1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1000, dtype=torch.float64) / 999
    assert torch.allclose(torch.sigmoid(sched.logsnr(t)), abar, rtol=1e-10, atol=0)
    assert sched.logsnr_max() == pytest.approx(math.log((1 - 1e-4) / 1e-4), rel=1e-9)


def test_shift_is_two_log_ratio_and_bound_to_grid():
    base = CosineSchedule()
    sched = ShiftedSchedule(base, reference=64)
    t = torch.rand(50, dtype=torch.float64)
    for res in (32, 64, 128, 256):
        diff = sched.logsnr(t, (res, res)) - base.logsnr(t)
        assert torch.allclose(diff, torch.full_like(diff, 2 * math.log(64 / res)))
    # non-square rule: d = sqrt(H W)
    diff = sched.logsnr(t, (64, 256)) - base.logsnr(t)
    assert torch.allclose(diff, torch.full_like(diff, 2 * math.log(64 / 128)))
    with pytest.raises(ValueError, match="needs the grid"):
        sched.logsnr(t)


def test_interpolated_follows_appendix_code():
    base = CosineSchedule()
    sched = InterpolatedShiftedSchedule(base, 32, 256)
    grid = (512, 512)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    low = base.logsnr(t) + 2 * math.log(32 / 512)
    high = base.logsnr(t) + 2 * math.log(256 / 512)
    assert torch.allclose(sched.logsnr(t, grid), t * low + (1 - t) * high)
    # endpoints: the high-reference shift at t=0, the low-reference one at t=1
    assert sched.logsnr_max(grid) == pytest.approx(15 + 2 * math.log(0.5))
    assert sched.logsnr_min(grid) == pytest.approx(-15 + 2 * math.log(32 / 512))


def test_discrete_view():
    sched = CosineSchedule()
    d = sched.discrete(10)
    assert d.shape == (11,) and d[0] == pytest.approx(15) and d[-1] == pytest.approx(-15)
    assert sched.alphas_cumprod(10).shape == (10,)
    with pytest.raises(ValueError, match="steps"):
        sched.discrete(0)


def test_bad_input():
    with pytest.raises(ValueError, match="logsnr_min must be smaller"):
        CosineSchedule(5.0, -5.0)
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        build_schedule("cosin")
    with pytest.raises(ValueError, match="low_reference"):
        InterpolatedShiftedSchedule(low_reference=256, high_reference=32)
    with pytest.raises(ValueError, match="beta"):
        LinearSchedule(0.02, 1e-4)
    with pytest.raises(ValueError, match="at least 2x2"):
        ShiftedSchedule().logsnr(torch.tensor(0.5), (1, 64))
    assert isinstance(build_schedule("shifted", reference=32), ShiftedSchedule)
