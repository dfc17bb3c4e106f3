"""Samplers against closed forms: Gaussian data with the exact posterior-mean denoiser."""

import pytest
import torch
from gaussian_oracle import expected_pixel_std, oracle_model_fn

from lightning_infdiff.denoisers.base import Denoiser
from lightning_infdiff.operators import HeatKernelOperator, IdentityOperator
from lightning_infdiff.processes import GaussianProcess
from lightning_infdiff.samplers import clip_x0, make_model_fn, sample
from lightning_infdiff.schedules import CosineSchedule, ShiftedSchedule

MU, S, GRID = 0.3, 0.5, (8, 8)
SEEDS = list(range(2000))
OPS = {"plain": IdentityOperator(), "mollified": HeatKernelOperator(width=1 / 8)}
# (sampler, extra kwargs, coarse steps, fine steps, tolerance on the std at the fine steps)
CASES = [
    ("ddpm", {}, 25, 400, 0.03),
    ("ddim", {}, 25, 400, 0.02),
    ("ddim", {"eta": 1.0}, 25, 400, 0.03),
    ("dpmpp_2m", {}, 5, 50, 0.01),
]


def _errors(proc, sampler, kw, steps):
    fn = oracle_model_fn(proc, MU, S, GRID)
    x = sample(proc, None, GRID, SEEDS, channels=1, steps=steps, sampler=sampler, clip="none", model_fn=fn, **kw)
    std = expected_pixel_std(proc, S, GRID).float()
    return (x.mean() - MU).abs().item(), abs((x.std(0)[0] / std).mean().item() - 1)


@pytest.mark.parametrize("op_name", list(OPS))
@pytest.mark.parametrize("sampler,kw,coarse,fine,tol", CASES, ids=lambda v: str(v))
def test_sampler_recovers_gaussian_data(op_name, sampler, kw, coarse, fine, tol):
    """Mean within 0.01 and std within ``tol`` at the fine step count; the std error shrinks with steps."""
    proc = GaussianProcess(CosineSchedule(), OPS[op_name], "v")
    m_coarse, s_coarse = _errors(proc, sampler, kw, coarse)
    m_fine, s_fine = _errors(proc, sampler, kw, fine)
    assert m_fine < 0.01 and m_coarse < 0.01
    assert s_fine < tol, (s_coarse, s_fine)
    assert s_fine < 0.5 * s_coarse, (s_coarse, s_fine)


@pytest.mark.parametrize("param", ["eps", "mollified_eps", "x0"])
def test_parametrisations_give_the_same_samples(param):
    op = HeatKernelOperator(width=0.5 / 8)
    ref_proc = GaussianProcess(CosineSchedule(), op, "v")
    proc = GaussianProcess(CosineSchedule(), op, param)
    kw = dict(channels=1, steps=20, sampler="ddim", clip="none")
    a = sample(ref_proc, None, GRID, SEEDS[:64], model_fn=oracle_model_fn(ref_proc, MU, S, GRID), **kw)
    b = sample(proc, None, GRID, SEEDS[:64], model_fn=oracle_model_fn(proc, MU, S, GRID), **kw)
    assert torch.allclose(a, b, atol=2e-3)


class TinyNet(Denoiser):
    """A per-point network with optional class conditioning (no cross-example interaction)."""

    def __init__(self, num_classes: int = 0) -> None:
        super().__init__(1, num_classes=num_classes)
        self.emb = torch.nn.Embedding(num_classes + 1, 4) if num_classes else None
        self.net = torch.nn.Sequential(torch.nn.Linear(1 + 2 + 1 + 4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def forward(self, values, coords, logsnr, grid, cond=None):
        b, n, _ = values.shape
        e = self.emb(cond) if self.emb is not None else values.new_zeros(b, 4)
        feats = [values, coords, (logsnr / 10)[:, None, None].expand(b, n, 1), e[:, None].expand(b, n, 4)]
        return self.net(torch.cat(feats, -1))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_per_sample_seeds_independent_of_batch(sampler):
    net = TinyNet().eval()
    proc = GaussianProcess(CosineSchedule(), HeatKernelOperator(width=0.1), "v")
    seeds = [11, 12, 13, 14, 15, 16, 17, 18]
    kw = dict(channels=1, steps=6, sampler=sampler, eta=0.5)
    batch = sample(proc, net, (6, 10), seeds, **kw)
    single = torch.cat([sample(proc, net, (6, 10), [s], **kw) for s in seeds])
    assert batch.shape == (8, 1, 6, 10)
    assert torch.equal(batch, single)  # bitwise: noise per seed, no cross-sample interaction
    other = sample(proc, net, (6, 10), [99] + seeds[1:], **kw)
    assert torch.equal(other[1:], batch[1:])
    assert not torch.allclose(other[0], batch[0])


def test_classifier_free_guidance_combines_outputs():
    net = TinyNet(num_classes=3).eval()
    cond = torch.tensor([0, 2])
    x = torch.randn(2, 1, 4, 4)
    lam = torch.tensor([0.0, 1.0])
    guided = make_model_fn(net, (4, 4), cond, guidance_scale=3.0)(x, lam)
    c = make_model_fn(net, (4, 4), cond)(x, lam)
    u = make_model_fn(net, (4, 4), torch.full_like(cond, 3))(x, lam)
    assert torch.allclose(guided, u + 3.0 * (c - u), atol=1e-6)
    with pytest.raises(ValueError, match="null condition"):
        make_model_fn(TinyNet(), (4, 4), cond, guidance_scale=2.0)
    samples = sample(GaussianProcess(), net, (4, 4), [1, 2], channels=1, steps=3, cond=cond, guidance_scale=2.0)
    assert samples.shape == (2, 1, 4, 4)


def test_clipping():
    y = torch.tensor([[-3.0, -0.5, 0.2, 2.0]]).reshape(1, 1, 2, 2)
    assert torch.equal(clip_x0(y, "static"), y.clamp(-1, 1))
    assert torch.equal(clip_x0(y, "none"), y)
    s = torch.quantile(y.abs().flatten(), 0.5).item()  # 1.25 (> 1)
    assert torch.allclose(clip_x0(y, "dynamic", 0.5), y.clamp(-s, s) / s)
    small = torch.full((1, 1, 2, 2), 0.3)
    assert torch.equal(clip_x0(small, "dynamic"), small)  # threshold floors at 1
    with pytest.raises(ValueError, match="clip mode"):
        clip_x0(y, "soft")
    out = sample(GaussianProcess(), TinyNet().eval(), (4, 4), [0, 1], channels=1, steps=3, clip="static")
    assert out.abs().max() <= 1.0


def test_any_grid_and_shifted_schedule():
    net = TinyNet().eval()
    proc = GaussianProcess(ShiftedSchedule(CosineSchedule(), reference=8), IdentityOperator(), "v")
    out = sample(proc, net, (5, 13), [0, 1, 2], channels=1, steps=4, progress=True)
    assert out.shape == (3, 1, 5, 13) and torch.isfinite(out).all()


def test_bad_arguments():
    net = TinyNet().eval()
    proc = GaussianProcess()
    with pytest.raises(ValueError, match="steps"):
        sample(proc, net, (4, 4), [0], channels=1, steps=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(proc, net, (4, 4), [0], channels=1, sampler="lms")
    with pytest.raises(ValueError, match="at least 2x2"):
        sample(proc, net, (1, 4), [0], channels=1)
    with pytest.raises(ValueError, match="eta"):
        sample(proc, net, (4, 4), [0], channels=1, eta=2.0)
    with pytest.raises(ValueError, match="seeds"):
        sample(proc, net, (4, 4), [], channels=1)
