"""Resolution-aware sampling, one test per point of lightning_infdiff.applications.resolution.

1. any H x W: every denoiser config in configs/denoisers/ (tiny instance) samples non-square grids;
2. the schedule is rebound to the sampling grid (simple diffusion's shift, closed form);
3. the mollifier width is in domain units (same DCT multipliers / same physical blur at every grid);
4. the noise scale keeps the pointwise noise variance fixed across grids (both rules);
5. the sparse operator's kernels are resized with the grid; ``resolution_plan`` reports all of it;
6. progressive (coarse-to-fine) sampling with one model: exact transfer rule, closed-form check.
"""

from __future__ import annotations

import importlib
import inspect
import math
from pathlib import Path

import pytest
import torch
import yaml

from lightning_infdiff.applications.progressive import progressive_sample, upsample_state
from lightning_infdiff.applications.resolution import resolution_plan
from lightning_infdiff.coords import Grid
from lightning_infdiff.denoisers import SparseNeuralOperator
from lightning_infdiff.operators import HeatKernelOperator, IdentityOperator
from lightning_infdiff.processes import GaussianProcess
from lightning_infdiff.samplers import sample
from lightning_infdiff.schedules import CosineSchedule, ShiftedSchedule, alpha_sigma

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "denoisers").glob("*.yaml"))
# tiny values for the size arguments the configs set (anything else keeps the config's value)
SHRINK = {
    "channels": 8, "hidden": 16, "width": 8, "inner_channels": 8, "emb_dim": 16, "head_channels": 8, "depth": 1,
    "num_transformer_blocks": 1, "heads": 2, "modes": 4, "inner_resolution": 8, "train_resolution": 16,
    "resolution": 16, "transformer_resolution": 8, "latent_dim": 6, "prior_hidden": 16, "prior_depth": 2,
    "prior_steps": 4,
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_from_config(path: Path, num_classes: int = 3) -> torch.nn.Module:
    spec = yaml.safe_load(path.read_text())["model"]["denoiser"]
    module, name = spec["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    args = {k: SHRINK.get(k, v) for k, v in spec.get("init_args", {}).items()}
    if "transformer_resolution" in args:  # keep the config's number of halvings down to the token grid
        init = spec["init_args"]
        args["transformer_resolution"] = SHRINK["resolution"] * init["transformer_resolution"] // init["resolution"]
    if "num_classes" in inspect.signature(cls.__init__).parameters:
        args["num_classes"] = num_classes
    return cls(in_channels=1, **args).eval()


def condition(net: torch.nn.Module, n: int) -> torch.Tensor:
    """Class labels, or latents from the prior for diffusion autoencoders (their condition)."""
    if hasattr(net, "sample_latents"):
        return net.sample_latents(list(range(n)))
    return torch.arange(n) % 3


def test_every_denoiser_config_is_covered():
    assert len(CONFIGS) >= 8, [p.name for p in CONFIGS]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_non_square_sampling_every_denoiser_config(path):
    net = tiny_from_config(path)
    proc = GaussianProcess(ShiftedSchedule(CosineSchedule(), reference=16), HeatKernelOperator(1 / 32), "v")
    for grid in [(12, 20), (9, 14)]:
        out = sample(proc, net, grid, [0, 1], channels=1, steps=2, cond=condition(net, 2))
        assert out.shape == (2, 1, *grid) and torch.isfinite(out).all()
    # per-sample seeds hold at a non-square grid too: sample 1 alone equals sample 1 of the pair
    cond = condition(net, 2)
    pair = sample(proc, net, (12, 20), [5, 6], channels=1, steps=2, cond=cond)
    alone = sample(proc, net, (12, 20), [6], channels=1, steps=2, cond=cond[1:])
    assert torch.allclose(pair[1:], alone, atol=1e-5)


@pytest.mark.parametrize("grid", [(8, 8), (16, 16), (8, 32), (12, 20)])
def test_schedule_rebound_to_sampling_grid(grid):
    """The sampler's noise levels are the shifted schedule evaluated on the sampling grid:
    lambda(t) + 2 log(reference / sqrt(H W)) (simple diffusion eq. 5)."""
    base = CosineSchedule()
    proc = GaussianProcess(ShiftedSchedule(base, reference=8), IdentityOperator(), "v")
    seen: list[float] = []

    def fn(x, lam):
        seen.append(float(lam[0]))
        return torch.zeros_like(x)

    sample(proc, None, grid, [0], channels=1, steps=4, sampler="ddim", model_fn=fn)
    t = torch.linspace(1.0, 0.0, 5, dtype=torch.float64)
    shift = 2.0 * math.log(8 / math.sqrt(grid[0] * grid[1]))
    expected = (base.logsnr(t) + shift).float()
    assert torch.allclose(torch.tensor(seen), expected, atol=1e-4)


@pytest.mark.parametrize("n", [16, 32, 64])
def test_mollifier_multiplier_is_resolution_free(n):
    """A DCT mode cos(pi k x) at pixel centres is scaled by exp(-(pi k width)^2 / 2) at every n."""
    op = HeatKernelOperator(width=1 / 16)
    x = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    for ky, kx in [(1, 0), (2, 3), (5, 1)]:
        field = torch.cos(math.pi * ky * x)[:, None] * torch.cos(math.pi * kx * x)[None, :]
        gain = math.exp(-0.5 * (math.pi / 16) ** 2 * (ky**2 + kx**2))
        assert torch.allclose(op.apply(field), gain * field, atol=1e-10)


@pytest.mark.parametrize("grid,pixels", [((32, 32), (2, 2)), ((64, 64), (4, 4)), ((32, 64), (2, 4)),
                                         (Grid(32, 64, "wide"), (2, 2)), (Grid(64, 32, "wide"), (2, 2))])
def test_mollifier_width_in_domain_units(grid, pixels):
    """The blur of a central impulse has std ``width`` domain units: ``width / pitch`` pixels per
    axis (a stretch 32x64 grid has non-square pixels; a wide one square pixels)."""
    width = 1 / 16
    op = HeatKernelOperator(width=width).at(getattr(grid, "canvas", "stretch"))
    h, w = grid
    impulse = torch.zeros(h, w, dtype=torch.float64)
    impulse[h // 2, w // 2] = 1.0
    out = op.apply(impulse)
    for axis, size in ((0, h), (1, w)):
        prof = out.sum(dim=1 - axis)
        pos = torch.arange(size, dtype=torch.float64)
        mean = (prof * pos).sum() / prof.sum()
        std = ((prof * (pos - mean) ** 2).sum() / prof.sum()).sqrt()
        assert abs(std.item() - pixels[axis]) < 0.02 * pixels[axis]


@pytest.mark.parametrize("grid", [(16, 16), (32, 32), (12, 20)])
def test_noise_scale_unit_pointwise_variance(grid):
    """normalise_noise: c T xi has mean pointwise variance exactly 1 on every grid (closed form),
    and the empirical variance agrees."""
    op = HeatKernelOperator(width=1 / 16)
    c = op.noise_scale(grid)
    exact = c**2 * float((op.multipliers(grid) ** 2).sum()) / (grid[0] * grid[1])
    assert abs(exact - 1.0) < 1e-9
    g = torch.Generator().manual_seed(0)
    white = torch.randn(4000, *grid, generator=g, dtype=torch.float64)
    var = (op.apply(white) * c).var(dim=0).mean().item()
    assert abs(var - 1.0) < 0.05


def test_noise_scale_infdiff_rule_keeps_variance_across_resolutions():
    """normalise_noise=False: white noise scaled by sqrt(H W)/reference (∞-Diff's N'/N) keeps the
    mean pointwise variance of c T xi (nearly) the same at 32, 64 and 128."""
    op = HeatKernelOperator(width=1 / 16, normalise_noise=False, reference=32)
    vals = []
    for n in (32, 64, 128):
        c = op.noise_scale((n, n))
        assert abs(c - n / 32) < 1e-12
        vals.append(c**2 * float((op.multipliers((n, n)) ** 2).sum()) / n**2)
    assert max(vals) / min(vals) < 1.01, vals


def test_resolution_plan_reports_what_changes():
    proc = GaussianProcess(ShiftedSchedule(CosineSchedule(), reference=16), HeatKernelOperator(1 / 32), "v")
    net = SparseNeuralOperator(
        1, train_resolution=16, channels=8, depth=1, kernel_size=3, inner_resolution=8, inner_channels=8,
        channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], emb_dim=16, head_channels=8,
    )
    plan = resolution_plan(proc, (16, 16), (32, 32), net)
    tr, sm = plan["train"], plan["sample"]
    assert sm["logsnr_mid"] - tr["logsnr_mid"] == pytest.approx(-2 * math.log(2), abs=1e-9)  # 4x less SNR
    assert sm["blur_pixels"] == pytest.approx(tuple(2 * p for p in tr["blur_pixels"]))  # same physical blur
    assert tr["kernel_size"] == (3, 3) and sm["kernel_size"][0] > 3  # kernel resized with the grid
    for row in (tr, sm):  # unit pointwise noise variance on both grids
        op = proc.operator
        g = row["grid"]
        assert row["noise_scale"] ** 2 * float((op.multipliers(g) ** 2).sum()) / (g[0] * g[1]) == pytest.approx(1.0)
    # a wider view at the training pitch: nothing but the window changes; stretched: everything does along x
    wide = resolution_plan(proc, (16, 16), Grid(16, 32, "wide"), net)["sample"]
    assert wide["pitch"] == (1 / 16, 1 / 16) and wide["logsnr_mid"] == pytest.approx(tr["logsnr_mid"])
    assert wide["blur_pixels"] == pytest.approx(tr["blur_pixels"]) and wide["kernel_size"] == (3, 3)
    assert wide["inner_grid"] == (8, 16) and tr["inner_grid"] == (8, 8)
    stretch = resolution_plan(proc, (16, 16), (16, 32), net)["sample"]
    assert stretch["pitch"] == (1 / 16, 1 / 32) and stretch["blur_pixels"] == pytest.approx((0.5, 1.0))
    assert stretch["kernel_size"][0] == 3 and stretch["kernel_size"][1] > 3 and stretch["inner_grid"] == (8, 8)
    assert stretch["logsnr_mid"] == pytest.approx(tr["logsnr_mid"] - math.log(2))  # sqrt(16 * 32) = 16 sqrt(2)


# ---------------------------------------------------------------- progressive sampling
def constant_image_oracle(process: GaussianProcess, mu: float, s: float):
    """Exact denoiser for constant images x0 = (mu + s z) 1 (plain diffusion), on any grid:
    E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2 / P) (mean(x_t) - alpha mu), P pixels."""

    def fn(x, lam):
        a, sg = (v.view(-1, 1, 1, 1) for v in alpha_sigma(lam.double()))
        x = x.double()
        p = x.shape[-2] * x.shape[-1]
        xbar = x.mean(dim=(1, 2, 3), keepdim=True)
        y0 = (mu + a * s**2 / (a**2 * s**2 + sg**2 / p) * (xbar - a * mu)).expand_as(x)
        n = (x - a * y0) / sg
        return process.param.from_y0_noise(y0, n, lam.double(), process.operator).float()

    return fn


@pytest.mark.parametrize("grids", [[(4, 4), (8, 8)], [(4, 4), (8, 8), (16, 16)], [(4, 6), (8, 12)]])
def test_progressive_sampling_recovers_constant_image_data(grids):
    """The coarse-to-fine transfer (lambda_h = lambda_l - log f, D x_h = alpha_h/alpha_l x_l, fresh
    orthogonal noise) is exact for plain diffusion on data whose block means match across grids:
    with the exact denoiser the samples have the data's mean and spread on the final grid."""
    mu, s = 0.3, 0.4
    proc = GaussianProcess(CosineSchedule(), IdentityOperator(), "v")
    fn = constant_image_oracle(proc, mu, s)
    seeds = list(range(300))
    switch = [0.7, 0.45][: len(grids) - 1]
    out = progressive_sample(proc, None, grids, seeds, 1, switch, [12] * len(grids), sampler="ddpm",
                             clip="none", model_fn=fn)
    assert out.shape == (300, 1, *grids[-1])
    per_image = out.mean(dim=(1, 2, 3))
    assert abs(per_image.mean().item() - mu) < 0.06
    assert abs(per_image.std().item() / s - 1) < 0.15
    assert out.std(dim=(2, 3)).mean() < 0.05  # each sample is (nearly) constant


def test_progressive_transfer_rule_and_errors():
    proc = GaussianProcess(CosineSchedule(), IdentityOperator(), "v")
    x = torch.randn(2, 1, 4, 4)
    noise = torch.randn(2, 1, 8, 8)
    up, lam_h = upsample_state(proc, x, 1.0, (8, 8), noise)
    assert lam_h == pytest.approx(1.0 - math.log(4))
    a_l = alpha_sigma(torch.tensor(1.0))[0]
    a_h = alpha_sigma(torch.tensor(lam_h))[0]
    assert torch.allclose(torch.nn.functional.avg_pool2d(up, 2), (a_h / a_l) * x, atol=1e-6)
    with pytest.raises(ValueError, match="integer factors"):
        upsample_state(proc, x, 1.0, (6, 6), torch.randn(2, 1, 6, 6))
    fn = constant_image_oracle(proc, 0.0, 1.0)
    with pytest.raises(ValueError, match="switch_times"):
        progressive_sample(proc, None, [(4, 4), (8, 8)], [0], 1, [0.2, 0.1], [2, 2], model_fn=fn)
    with pytest.raises(ValueError, match="len\\(steps\\)"):
        progressive_sample(proc, None, [(4, 4), (8, 8)], [0], 1, [0.5], [2], model_fn=fn)
    # with simple diffusion's shifted schedule the fine stage continues at the same t: the
    # transfer's -log f is exactly the schedule's shift between the two grids
    shifted = GaussianProcess(ShiftedSchedule(CosineSchedule(), reference=4), IdentityOperator(), "v")
    seen = []

    def record(x, lam):
        seen.append(float(lam[0]))
        return torch.zeros_like(x)

    progressive_sample(shifted, None, [(4, 4), (8, 8)], [0], 1, [0.5], [2, 2], model_fn=record)
    expected = float(shifted.schedule.logsnr(torch.tensor(0.5, dtype=torch.float64), (8, 8)))
    assert seen[3] == pytest.approx(expected, abs=1e-4)  # stage 1 made 2 steps + 1 final estimate
    net = tiny_from_config(CONFIGS[0])  # a real network through every stage
    out = progressive_sample(proc, net, [(6, 8), (12, 16)], [0, 1], 1, [0.5], [2, 2])
    assert out.shape == (2, 1, 12, 16) and torch.isfinite(out).all()
