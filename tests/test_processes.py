import pytest
import torch

from lightning_infdiff.coords import gather, index_to_coords
from lightning_infdiff.denoisers.base import Denoiser
from lightning_infdiff.losses import MinSNRWeighting, SNRWeighting, UnitWeighting, multiscale_mse
from lightning_infdiff.operators import HeatKernelOperator, IdentityOperator
from lightning_infdiff.parametrisations import build_parametrisation
from lightning_infdiff.processes import GaussianProcess, posterior
from lightning_infdiff.schedules import CosineSchedule, alpha_sigma

OPS = [IdentityOperator(), HeatKernelOperator(width=0.5 / 8)]


class PointMLP(Denoiser):
    """Tiny per-point network for loss tests."""

    def __init__(self, c: int = 2) -> None:
        super().__init__(c)
        self.net = torch.nn.Sequential(torch.nn.Linear(c + 3, 16), torch.nn.SiLU(), torch.nn.Linear(16, c))

    def forward(self, values, coords, logsnr, grid, cond=None):
        lam = logsnr[:, None, None].expand(-1, values.shape[1], 1) / 10
        return self.net(torch.cat([values, coords, lam], -1))


@pytest.mark.parametrize("name", ["eps", "mollified_eps", "v", "x0"])
@pytest.mark.parametrize("op", OPS, ids=repr)
def test_parametrisation_round_trip(name, op):
    torch.manual_seed(1)
    param = build_parametrisation(name)
    x0 = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    lam = torch.tensor([-6.0, -1.0, 2.0, 7.0], dtype=torch.float64)
    white = torch.randn_like(x0) * op.noise_scale((8, 8))
    y0, noise = op.apply(x0), op.apply(white)
    a, s = alpha_sigma(lam)
    x_t = a[:, None, None, None] * y0 + s[:, None, None, None] * noise
    target = param.target(x0, white, y0, noise, lam)
    y0_hat, n_hat = param.to_y0_noise(target, x_t, lam, op)
    assert torch.allclose(y0_hat, y0, atol=1e-9) and torch.allclose(n_hat, noise, atol=1e-9)
    assert torch.allclose(param.from_y0_noise(y0, noise, lam, op), target, atol=1e-8)


def test_eps_equals_mollified_eps_without_blur():
    x0, white = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    lam = torch.zeros(2)
    a = build_parametrisation("eps").target(x0, white, x0, white, lam)
    b = build_parametrisation("mollified_eps").target(x0, white, x0, white, lam)
    assert torch.equal(a, b)


def test_posterior_coefficients_match_infdiff_eq10():
    """DDPM-notation coefficients of eq. 10 from logSNR, and the marginal identity of eqs. 23-28."""
    lt = torch.linspace(-8, 6, 15, dtype=torch.float64)
    ls = lt + 0.7
    abar_t, abar_s = torch.sigmoid(lt), torch.sigmoid(ls)
    alpha = abar_t / abar_s
    beta = 1 - alpha
    coef_y0, coef_xt, var = posterior(lt, ls)
    assert torch.allclose(coef_y0, abar_s.sqrt() * beta / (1 - abar_t))
    assert torch.allclose(coef_xt, alpha.sqrt() * (1 - abar_s) / (1 - abar_t))
    assert torch.allclose(var, (1 - abar_s) / (1 - abar_t) * beta)
    # A mu + b = sqrt(abar_s) T x0 and L^-1 + A Lambda^-1 A* = (1 - abar_s) T T*
    assert torch.allclose(coef_xt * abar_t.sqrt() + coef_y0, abar_s.sqrt())
    assert torch.allclose(var + coef_xt**2 * (1 - abar_t), 1 - abar_s)


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_corruption_statistics(op):
    proc = GaussianProcess(CosineSchedule(), op, "mollified_eps")
    x0 = torch.full((4000, 1, 8, 8), 0.5)
    lam = torch.full((4000,), 1.0)
    c = proc.corrupt(x0, lam)
    a, s = alpha_sigma(torch.tensor(1.0))
    assert c.x_t.mean().item() == pytest.approx(float(a) * 0.5, abs=0.01)
    # pointwise noise variance averages to sigma^2 (unit-normalised mollified noise)
    assert c.noise.var(dim=0).mean().item() == pytest.approx(1.0, rel=0.03)
    assert torch.allclose(c.x_t, a * c.y0 + s * c.noise, atol=1e-6)


def test_zero_blur_reproduces_plain_process_exactly():
    x0 = torch.rand(3, 2, 6, 10) * 2 - 1
    idx = torch.stack([torch.randperm(60)[:20] for _ in range(3)])
    net = PointMLP()
    losses = []
    for op in (IdentityOperator(), HeatKernelOperator(width=0.0)):
        proc = GaussianProcess(CosineSchedule(), op, "v", "min_snr")
        losses.append(proc.loss(net, x0, idx, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(losses[0], losses[1])


def test_loss_uses_only_sampled_points():
    """The per-example loss is the mean squared error at the sampled coordinates, nothing else."""
    x0 = torch.rand(2, 2, 8, 8)
    idx = torch.stack([torch.randperm(64)[:16] for _ in range(2)])
    lam = torch.tensor([0.5, -2.0])
    proc = GaussianProcess(CosineSchedule(), HeatKernelOperator(width=0.1), "mollified_eps")
    net = PointMLP()
    gen = torch.Generator().manual_seed(5)
    loss = proc.loss(net, x0, idx, logsnr=lam, generator=gen)
    gen = torch.Generator().manual_seed(5)
    white = torch.randn(x0.shape, generator=gen) * proc.operator.noise_scale((8, 8))
    c = proc.corrupt(x0, lam, white=white)
    out = net(gather(c.x_t, idx), index_to_coords(idx, (8, 8)), lam, (8, 8))
    expect = (out - gather(c.noise, idx)).pow(2).mean(dim=(1, 2))
    assert torch.allclose(loss, expect, atol=1e-6)
    loss.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_weightings_in_x0_units():
    lam = torch.tensor([-3.0, 0.0, 4.0])
    snr = torch.exp(lam)
    eps, v, x0 = (build_parametrisation(n) for n in ("eps", "v", "x0"))
    assert torch.equal(UnitWeighting()(lam, v), torch.ones(3))
    assert torch.allclose(SNRWeighting()(lam, eps), torch.ones(3))
    assert torch.allclose(MinSNRWeighting(5.0)(lam, eps), torch.clamp(snr, max=5) / snr)
    assert torch.allclose(MinSNRWeighting(5.0)(lam, v), torch.clamp(snr, max=5) / (snr + 1))
    assert torch.allclose(MinSNRWeighting(5.0)(lam, x0), torch.clamp(snr, max=5))


def test_multiscale_loss_closed_form():
    pred = torch.zeros(1, 1, 4, 4)
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 0, 0] = 4.0  # native MSE 1; pooled 2x2: one value 1 of 4 -> MSE 0.25
    loss = multiscale_mse(pred, target, base_resolution=2)
    expect = (1.0 / 4 + 0.25 / 2) / (1 / 4 + 1 / 2)
    assert loss.item() == pytest.approx(expect)
    proc = GaussianProcess(multiscale=True, multiscale_base=2)
    with pytest.raises(ValueError, match="full grids"):
        proc.loss(PointMLP(1), torch.zeros(1, 1, 4, 4), torch.tensor([[0, 1]]))
    assert proc.loss(PointMLP(1), torch.zeros(2, 1, 4, 4)).shape == (2,)


def test_bad_names():
    with pytest.raises(ValueError, match="unknown parametrisation 'eps2'"):
        GaussianProcess(parametrisation="eps2")
    with pytest.raises(ValueError, match="unknown loss weighting"):
        GaussianProcess(weighting="p2")
    with pytest.raises(ValueError, match="gamma"):
        MinSNRWeighting(0)
