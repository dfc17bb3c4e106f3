"""Flow matching, EDM, sigmoid weighting and training noise-level distributions, in closed form.

Flow matching and EDM are changes of variables of the VP process here; each test checks the
formulation as its paper writes it (in its own variables) against what the process computes.
"""

from __future__ import annotations

import math

import pytest
import torch
from gaussian_oracle import oracle_model_fn

from lightning_infdiff.losses import EDMWeighting, SigmoidWeighting, UnitWeighting
from lightning_infdiff.noise_levels import (
    LogitNormalTime,
    LogNormalSigma,
    UniformTime,
    effective_weighting,
)
from lightning_infdiff.operators import HeatKernelOperator, IdentityOperator
from lightning_infdiff.parametrisations import (
    EDMParametrisation,
    FlowParametrisation,
    VParametrisation,
)
from lightning_infdiff.processes import GaussianProcess
from lightning_infdiff.samplers import sample
from lightning_infdiff.schedules import (
    CosineSchedule,
    KarrasSchedule,
    RectifiedFlowSchedule,
    alpha_sigma,
)

GRID = (8, 8)


class Recorder(torch.nn.Module):
    """A denoiser that returns a fixed linear map of its input and remembers what it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: torch.Tensor | None = None

    def forward(self, values, coords, logsnr, grid, cond=None):
        self.seen = values.detach().clone()
        return 0.5 * values


def corruption(process: GaussianProcess, lam: torch.Tensor, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.rand(3, 1, *GRID, generator=gen) * 2 - 1
    xi = torch.randn(3, 1, *GRID, generator=gen)
    c = process.corrupt(x0, lam, white=xi * process.operator.noise_scale(GRID))
    return x0, c


@pytest.mark.parametrize("operator", [IdentityOperator(), HeatKernelOperator(width=0.05)], ids=["plain", "mollified"])
def test_flow_matching_is_the_linear_path_with_the_velocity_target(operator):
    """z_t = (1 - t) y0 + t n is what the network sees, u = n - y0 = dz/dt is the target, and the
    conversion back recovers (y0, n) exactly."""
    process = GaussianProcess(RectifiedFlowSchedule(), operator, "flow")
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    lam = process.schedule.logsnr(t).float()
    x0, c = corruption(process, lam)
    t_ = torch.sigmoid(-0.5 * lam).view(-1, 1, 1, 1)  # flow time of each level (the schedule clips its ends)
    z = (1 - t_) * c.y0 + t_ * c.noise
    torch.testing.assert_close(process.net_input(c.x_t, lam), z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(process.target(x0, c), c.noise - c.y0)
    dz_dt = c.noise - c.y0  # derivative of the path in t
    torch.testing.assert_close(process.target(x0, c), dz_dt)
    y0, n = process.to_y0_noise(c.noise - c.y0, c.x_t, lam)
    torch.testing.assert_close(y0, c.y0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(n, c.noise, atol=1e-5, rtol=1e-5)


def test_flow_matching_loss_is_the_velocity_regression_on_z():
    process = GaussianProcess(RectifiedFlowSchedule(), IdentityOperator(), "flow")
    net = Recorder()
    t = torch.tensor([0.2, 0.6, 0.8], dtype=torch.float64)
    lam = process.schedule.logsnr(t).float()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.rand(3, 1, *GRID, generator=gen) * 2 - 1
    xi = torch.randn(3, 1, *GRID, generator=gen)
    loss = process.loss(net, x0, logsnr=lam, noise=xi)
    t_ = torch.sigmoid(-0.5 * lam).view(-1, 1, 1, 1)
    z = ((1 - t_) * x0 + t_ * xi).flatten(2).transpose(1, 2)
    torch.testing.assert_close(net.seen, z, atol=1e-5, rtol=1e-5)
    expected = (0.5 * z - (xi - x0).flatten(2).transpose(1, 2)).pow(2).mean(dim=(1, 2))
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_flow_euler_sampler_equals_ddim_on_the_vp_process():
    """Euler on the flow ODE dz/dt = u(z, t) in flow matching's own variables, with the exact
    velocity of Gaussian data, equals deterministic DDIM on the equivalent VP process."""
    mu, s, steps = 0.3, 0.7, 12
    process = GaussianProcess(RectifiedFlowSchedule(-10.0, 10.0), IdentityOperator(), "flow")
    oracle = oracle_model_fn(process, mu, s, GRID)
    lams = process.schedule.logsnr(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)).float()
    ddim = sample(process, None, GRID, [0, 1], channels=1, sampler="ddim", logsnrs=lams, clip="none", model_fn=oracle)
    # the same start: the sampler's first state x = alpha n + sigma... at lambda_0, as z = x / (alpha + sigma)
    x_start = {}
    sample(process, None, GRID, [0, 1], channels=1, sampler="ddim", logsnrs=lams[:2], clip="none", model_fn=oracle,
           callback=lambda info: x_start.setdefault("x", info.x_prev))
    a, sg = alpha_sigma(lams.double())
    ts = sg / (a + sg)  # flow time of each level
    z = x_start["x"].double() / (a[0] + sg[0])
    for i in range(steps):
        x_vp = z * (a[i] + sg[i])  # the VP state of z, where the oracle is defined
        u = oracle(x_vp.float(), lams[i].expand(2)).double()
        z = z + (ts[i + 1] - ts[i]) * u
    y0_hat, _ = process.to_y0_noise(oracle((z * (a[-1] + sg[-1])).float(), lams[-1].expand(2)),
                                    (z * (a[-1] + sg[-1])).float(), lams[-1].expand(2))
    torch.testing.assert_close(ddim, y0_hat.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sigma_data", [0.5, 1.0])
def test_edm_preconditioning_matches_the_paper(sigma_data):
    """c_in, c_skip, c_out of EDM's table 1 in sigma = sigma_t / alpha_t; at s_d = 1 the target is -v."""
    param = EDMParametrisation(sigma_data)
    lam = torch.tensor([-6.0, -1.0, 0.0, 2.5, 8.0], dtype=torch.float64)
    a, sg = alpha_sigma(lam)
    sigma = sg / a
    c_in = 1 / torch.sqrt(sigma**2 + sigma_data**2)
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / torch.sqrt(sigma**2 + sigma_data**2)
    gen = torch.Generator().manual_seed(2)
    x_vp = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
    f = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
    x_edm = x_vp / a.view(-1, 1, 1, 1)
    # the network sees c_in x_edm; D = c_skip x_edm + c_out F
    torch.testing.assert_close(param.input_scale(lam).view(-1, 1, 1, 1) * x_vp, c_in.view(-1, 1, 1, 1) * x_edm)
    y0, _ = param.to_y0_noise(f, x_vp, lam, IdentityOperator())
    torch.testing.assert_close(y0, c_skip.view(-1, 1, 1, 1) * x_edm + c_out.view(-1, 1, 1, 1) * f)
    # EDM's weighting puts unit weight on the preconditioned target
    torch.testing.assert_close(EDMWeighting(sigma_data)(lam, param), torch.ones_like(lam))
    if sigma_data == 1.0:
        x0 = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
        n = torch.randn(5, 1, 4, 4, generator=gen, dtype=torch.float64)
        v = VParametrisation().target(x0, n, x0, n, lam)
        torch.testing.assert_close(param.target(x0, n, x0, n, lam), -v)


@pytest.mark.parametrize("param", [FlowParametrisation(), EDMParametrisation(0.5)], ids=["flow", "edm"])
def test_x0_mse_factor_is_the_error_propagation(param):
    """An error d in the output moves y0_hat by d / sqrt(factor)."""
    lam = torch.tensor([-3.0, 0.0, 4.0], dtype=torch.float64)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    f = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    y_a, _ = param.to_y0_noise(f, x, lam, IdentityOperator())
    y_b, _ = param.to_y0_noise(f + 1.0, x, lam, IdentityOperator())
    moved = (y_b - y_a).flatten(1).mean(1)
    torch.testing.assert_close(moved**2, 1.0 / param.x0_mse_factor(lam))


def test_flow_and_karras_schedules_in_their_own_variables():
    flow = RectifiedFlowSchedule(-20.0, 20.0)
    t = torch.tensor([0.05, 0.3, 0.5, 0.95], dtype=torch.float64)
    # flow time s (SNR = ((1 - s)/s)^2) is affine in t between the clipped ends
    s_min, s_max = torch.sigmoid(torch.tensor(-10.0, dtype=torch.float64)), torch.sigmoid(torch.tensor(10.0, dtype=torch.float64))
    s = s_min + t * (s_max - s_min)
    torch.testing.assert_close(flow.logsnr(t), 2 * torch.log((1 - s) / s))
    assert float((s - t).abs().max()) < 1e-4  # the clip is invisible away from the ends
    torch.testing.assert_close(flow.t_of_logsnr(flow.logsnr(t)), t)
    karras = KarrasSchedule(0.002, 80.0, 7.0)
    sig = (0.002 ** (1 / 7) + t * (80.0 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
    torch.testing.assert_close(torch.exp(-0.5 * karras.logsnr(t)), sig)
    torch.testing.assert_close(karras.t_of_logsnr(karras.logsnr(t)), t)
    assert karras.logsnr_max() == pytest.approx(-2 * math.log(0.002))
    assert karras.logsnr_min() == pytest.approx(-2 * math.log(80.0))


def test_training_noise_levels_follow_their_papers():
    gen = torch.Generator().manual_seed(0)
    wide = CosineSchedule(-40.0, 40.0)
    lam = LogNormalSigma(-1.2, 1.2).sample(200_000, wide, GRID, gen)
    ln_sigma = -0.5 * lam
    assert float(ln_sigma.mean()) == pytest.approx(-1.2, abs=0.01) and float(ln_sigma.std()) == pytest.approx(1.2, abs=0.01)
    lam = LogitNormalTime(0.5, 0.8).sample(200_000, wide, GRID, gen)
    u = torch.logit(torch.sigmoid(-0.5 * lam))  # t = sigma / (alpha + sigma) = sigmoid(-lambda/2); u = logit(t)
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01) and float(u.std()) == pytest.approx(0.8, abs=0.01)
    clipped = LogNormalSigma(-1.2, 1.2).sample(10_000, CosineSchedule(-5.0, 5.0), GRID, gen)
    assert float(clipped.min()) >= -5.0 and float(clipped.max()) <= 5.0
    # every density integrates to 1 over a range that holds the distribution
    grid_l = torch.linspace(-39.9, 39.9, 40_001, dtype=torch.float64)
    for levels in (UniformTime(), LogitNormalTime(), LogNormalSigma()):
        mass = torch.trapezoid(levels.density(grid_l, wide, GRID), grid_l)
        assert float(mass) == pytest.approx(1.0, abs=2e-3), levels


def test_uniform_time_density_matches_the_histogram():
    sched = CosineSchedule()
    gen = torch.Generator().manual_seed(3)
    lam = UniformTime().sample(400_000, sched, GRID, gen)
    hist = torch.histc(lam, bins=20, min=-10.0, max=10.0) / (lam.numel() * 1.0)
    centres = torch.linspace(-9.5, 9.5, 20, dtype=torch.float64)
    torch.testing.assert_close(hist.double(), UniformTime().density(centres, sched, GRID), atol=2e-3, rtol=0.05)


def test_sigmoid_weighting_and_the_effective_weighting():
    """sigmoid(b - lambda) on the epsilon-MSE whatever the target; effective = p(lambda) w_eps."""
    lam = torch.linspace(-8.0, 8.0, 17, dtype=torch.float64)
    for target in ("eps", "v", "x0", "flow"):
        process = GaussianProcess(CosineSchedule(), IdentityOperator(), target, SigmoidWeighting(1.5))
        expected = UniformTime().density(lam, process.schedule, GRID) * torch.sigmoid(1.5 - lam)
        torch.testing.assert_close(effective_weighting(process, lam, GRID), expected, rtol=1e-5, atol=1e-9)
    # unit weight on eps: the effective weighting is the density alone
    process = GaussianProcess(CosineSchedule(), IdentityOperator(), "eps", UnitWeighting())
    torch.testing.assert_close(effective_weighting(process, lam, GRID), UniformTime().density(lam, process.schedule, GRID))


def test_objective_configs_train_a_step(tmp_path):
    """configs/process/{flow,edm,sigmoid}.yaml, plain and mollified, through `infdiff fit` (one step each)."""
    from pathlib import Path

    from lightning_infdiff.cli import InfDiffCLI
    from lightning_infdiff.data import FieldDataModule
    from lightning_infdiff.lit import DiffusionModule

    configs = Path(__file__).resolve().parents[1] / "configs"
    for name in ("flow", "edm", "sigmoid"):
        for extra in ([], [configs / "process/mollified.yaml"]):
            files = [configs / "base.yaml", configs / "data/blobs.yaml", configs / "denoisers/fno.yaml",
                     configs / f"process/{name}.yaml", *extra]
            args = ["fit", *(a for f in files for a in ("--config", str(f))), "--trainer.fast_dev_run=true",
                    "--trainer.precision=32-true", "--trainer.enable_progress_bar=false", "--data.batch_size=4",
                    "--data.val_size=4", "--data.num_workers=0", "--data.source.init_args.length=16",
                    "--samples.num_samples=1", "--model.sampling.steps=2", "--samples.grids=[[16, 16]]",
                    f"--trainer.default_root_dir={tmp_path}", "--data.resolution=16"]
            cli = InfDiffCLI(DiffusionModule, FieldDataModule, args=args)
            assert cli.trainer.state.finished and torch.isfinite(cli.trainer.callback_metrics["val/loss"])


def test_report_plots_the_effective_weighting_of_any_combination(tmp_path, capsys):
    from pathlib import Path

    from lightning_infdiff.report import main, process_from_overlays

    configs = Path(__file__).resolve().parents[1] / "configs/process"
    edm = process_from_overlays([configs / "edm.yaml", configs / "mollified.yaml"])
    assert edm.param.name == "edm" and type(edm.operator).__name__ == "HeatKernelOperator"
    assert type(edm.noise_levels).__name__ == "LogNormalSigma"
    rc = main(["--weighting", f"flow={configs / 'flow.yaml'}", "--weighting",
               f"v_sigmoid={configs / 'v.yaml'},{configs / 'sigmoid.yaml'}", "--dest", str(tmp_path)])
    assert rc == 0 and (tmp_path / "effective_weighting.png").stat().st_size > 1000
    assert main(["--weighting", "nolabel", "--dest", str(tmp_path)]) == 2
    assert "expected LABEL=A.yaml" in capsys.readouterr().err


def test_sample_command_takes_every_sampler_and_the_guidance_options(tmp_path, monkeypatch):
    """`infdiff sample` draws with each new sampler and hands the guidance interval and rescale to
    `generate` (the checkpoint is unconditional, so the call is recorded rather than its effect)."""
    from pathlib import Path

    from lightning_infdiff.cli import main
    from lightning_infdiff.lit import DiffusionModule

    seen, original = [], DiffusionModule.generate

    def record(self, *args, **kwargs):
        seen.append((args[2], kwargs["guidance_interval"], kwargs["guidance_rescale"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DiffusionModule, "generate", record)
    ckpt = Path(__file__).parent / "data/old_checkpoints/operator_7df682e.ckpt"
    for name in ("euler", "heun", "dpmpp_3m"):
        main(["sample", "--ckpt_path", str(ckpt), "--grid", "8", "--num", "2", "--steps", "3", "--sampler", name,
              "--out", str(tmp_path / name), "--guidance_interval", "[-2.0, 2.0]", "--guidance_rescale", "0.5"])
        assert (tmp_path / name / "grid_8x8.png").is_file()
    assert seen == [(n, [-2.0, 2.0], 0.5) for n in ("euler", "heun", "dpmpp_3m")]
