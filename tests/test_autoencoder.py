"""∞-Diff's diffusion-autoencoder route: sparse encoder, latent-scaled denoiser, latent prior."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from lightning_infdiff.batch import FieldBatch
from lightning_infdiff.coords import index_to_coords
from lightning_infdiff.denoisers import LatentPrior, SparseAutoencoder, SparseNeuralOperator
from lightning_infdiff.denoisers.latent_prior import ddim_vectors, latent_noise
from lightning_infdiff.lit import DiffusionModule, Sampling, WarmupConstant
from lightning_infdiff.processes import GaussianProcess
from lightning_infdiff.schedules import CosineSchedule

TINY = dict(
    in_channels=1, train_resolution=16, channels=8, depth=1, kernel_size=3, inner_resolution=8, inner_channels=8,
    channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), head_channels=8, emb_dim=16, dropout=0.0,
    latent_dim=6, prior_hidden=16, prior_depth=2, prior_steps=8,
)


def tiny(**kw) -> SparseAutoencoder:
    torch.manual_seed(0)
    return SparseAutoencoder(**{**TINY, **kw})


def subset(b: int, grid: tuple[int, int], n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(grid[0] * grid[1], generator=g)[:n] for _ in range(b)])
    return idx, index_to_coords(idx, grid)


def test_latent_is_normalised_and_order_invariant():
    """z has zero mean / unit (biased) variance over D, and does not depend on the point order."""
    model = tiny().eval()
    idx, coords = subset(3, (16, 16), 100)
    values = torch.randn(3, 100, 1)
    z = model.encode(values, coords, (16, 16))
    assert z.shape == (3, 6)
    torch.testing.assert_close(z.mean(1), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.var(1, unbiased=False), torch.ones(3), atol=1e-3, rtol=0)
    perm = torch.randperm(100)
    z2 = model.encode(values[:, perm], coords[:, perm], (16, 16))
    torch.testing.assert_close(z2, z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grid", [(8, 8), (16, 16), (32, 32), (64, 64), (16, 32)])
def test_encoder_and_decoder_run_at_any_grid(grid):
    """0.5x, 1x, 2x, 4x the training resolution and a non-square grid (full and subsampled)."""
    model = tiny().eval()
    hw = grid[0] * grid[1]
    for n in (hw, hw // 4):
        _, coords = subset(2, grid, n)
        values = torch.randn(2, n, 1)
        z = model.encode(values, coords, grid)
        out = model(values, coords, torch.zeros(2), grid, z)
        assert z.shape == (2, 6) and out.shape == (2, n, 1) and torch.isfinite(out).all()


def test_output_depends_on_latent_and_needs_one():
    model = tiny(zero_init_output=False).eval()
    for blk in [*model.down, *model.up]:
        torch.nn.init.normal_(blk.zscale.weight, std=0.5)
    _, coords = subset(2, (16, 16), 64)
    values = torch.randn(2, 64, 1)
    z1, z2 = torch.randn(2, 6), torch.randn(2, 6)
    out1 = model(values, coords, torch.zeros(2), (16, 16), z1)
    out2 = model(values, coords, torch.zeros(2), (16, 16), z2)
    assert (out1 - out2).abs().max() > 1e-3
    with pytest.raises(ValueError, match="latent cond of shape"):
        model(values, coords, torch.zeros(2), (16, 16))
    with pytest.raises(ValueError, match="latent cond of shape"):
        model(values, coords, torch.zeros(2), (16, 16), torch.tensor([1, 2]))


def test_class_and_latent_conditioning_are_exclusive():
    with pytest.raises(ValueError, match="either on a class or on a latent"):
        SparseNeuralOperator(in_channels=1, num_classes=10, latent_dim=8)
    with pytest.raises(ValueError, match="latent_dim >= 1"):
        SparseAutoencoder(**{**TINY, "latent_dim": 0})


def test_every_parameter_gets_a_gradient():
    """Denoiser loss through the encoder plus the prior loss on the detached latent.

    Zero-initialised layers (output, FiLM, latent scales, ADM residual convs) block gradients
    upstream until they have moved: chains are at most three deep, so check after three steps.
    """
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    process = GaussianProcess()
    x0 = torch.rand(2, 1, 16, 16) * 2 - 1
    idx, _ = subset(2, (16, 16), 64)
    enc_idx, enc_coords = subset(2, (16, 16), 64, seed=1)
    for step in range(4):
        opt.zero_grad()
        z = model.encode(x0.flatten(2).transpose(1, 2).gather(1, enc_idx[..., None]), enc_coords, (16, 16))
        gen = torch.Generator().manual_seed(step)
        loss = process.loss(model, x0, idx, z, generator=gen).mean() + model.prior_loss(z).mean()
        loss.backward()
        if step < 3:
            opt.step()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing


def test_prior_loss_does_not_reach_the_encoder():
    model = tiny()
    _, coords = subset(2, (16, 16), 64)
    z = model.encode(torch.randn(2, 64, 1), coords, (16, 16))
    model.prior_loss(z).mean().backward()
    assert all(p.grad is None for p in model.encoder.parameters())


def test_latent_ddim_recovers_gaussian_latents():
    """Exact v-predictor of N(m, s²) latents: DDIM (the probability-flow ODE) maps z_T to m + s·z_T.

    For ``z_0 ~ N(m, s²)``, Gaussian conditioning gives ``E[ε | z_t] = σ (z_t - α m) / (α² s² + σ²)``
    and ``E[z_0 | z_t] = m + α s² (z_t - α m) / (α² s² + σ²)``, so ``E[v | z_t] = α E[ε|z_t] - σ E[z_0|z_t]``;
    the exact ODE flow is the affine map ``z_T -> m + s z_T``. DDIM is first order: the
    error must shrink about linearly with the number of steps (measured: relative std error
    0.23 / 0.12 / 0.016 at 25 / 50 / 400 time-uniform cosine steps for the narrowest dimension).
    """
    m = torch.tensor([0.5, -1.0, 0.0, 2.0])
    s = torch.tensor([0.3, 1.0, 2.0, 0.1])
    sched = CosineSchedule()

    def v_fn(z_t, lam):
        a = torch.sigmoid(lam.double()).sqrt()[:, None]
        sig = torch.sigmoid(-lam.double()).sqrt()[:, None]
        resid = (z_t.double() - a * m) / (a**2 * s**2 + sig**2)
        return (a * sig * resid - sig * (m + a * s**2 * resid)).float()

    z = latent_noise(range(2000), 4)
    errors = []
    for steps, tol in [(25, 0.25), (50, 0.13), (400, 0.02)]:
        lams = sched.logsnr(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64))
        out = ddim_vectors(v_fn, z, lams)
        torch.testing.assert_close(out.mean(0), m + s * z.mean(0), atol=0.01, rtol=0)
        rel = ((out - m).std(0) / (s * z.std(0)) - 1).abs().max().item()
        assert rel < tol, f"std error {rel:.4f} at {steps} steps"
        errors.append(((out - (m + s * z)).abs() / s).max().item())
    assert errors[0] > 1.5 * errors[1] and errors[1] > 4 * errors[2], errors  # ~1/steps


def test_latent_noise_is_per_seed():
    a = latent_noise([3, 4, 5], 7)
    b = latent_noise([5], 7)
    torch.testing.assert_close(a[2:], b, atol=0, rtol=0)
    assert not torch.equal(a[0], a[1])


def test_prior_learns_a_gaussian():
    """A few hundred steps bring the v-MSE well below its value at initialisation.

    At initialisation ``v̂ = 0``, so the loss is ``E|v|² = α² + σ² (m² + s²)`` per entry; with
    ``E_t[α²] = E_t[σ²] = 1/2`` on the cosine schedule and ``mean(m² + s²) = 0.6025`` it is 0.80.
    """
    torch.manual_seed(0)
    prior = LatentPrior(4, hidden=32, depth=2, emb_dim=16)
    m, s = torch.tensor([1.0, -1.0, 0.5, 0.0]), torch.tensor([0.2, 0.2, 0.2, 0.2])
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    eval_z = m + s * torch.randn(512, 4, generator=gen)
    before = prior.loss(eval_z, generator=torch.Generator().manual_seed(1)).mean().item()
    for _ in range(300):
        loss = prior.loss(m + s * torch.randn(128, 4)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = prior.loss(eval_z, generator=torch.Generator().manual_seed(1)).mean().item()
    assert math.isclose(before, 0.80, rel_tol=0.1), before
    assert after < 0.5 * before, (before, after)


def test_module_trains_samples_and_reconstructs():
    """The LightningModule wiring through the denoiser's hooks: train step with both losses, prior
    samples, reconstructions."""
    module = DiffusionModule(tiny(), sampling=Sampling(steps=2), lr_scheduler=partial(WarmupConstant, warmup_steps=0))
    x0 = torch.rand(2, 1, 16, 16) * 2 - 1
    idx, _ = subset(2, (16, 16), 64)
    loss = module.training_step(FieldBatch(x0, idx), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    a = module.generate((16, 16), [0, 1])
    b = module.generate((16, 16), [1])
    assert a.shape == (2, 1, 16, 16)
    torch.testing.assert_close(a[1:], b, atol=1e-5, rtol=0)  # per-seed latents and noise
    z = module.denoiser.encode_images(x0)
    rec = module.generate((32, 48), [0, 1], latents=z)
    assert rec.shape == (2, 1, 32, 48)
    with pytest.raises(ValueError, match="takes no labels"):
        module.generate((16, 16), [0], labels=torch.tensor([1]))
    plain = DiffusionModule(SparseNeuralOperator(**{k: v for k, v in TINY.items() if not k.startswith("prior") and k != "latent_dim"}))
    with pytest.raises(ValueError, match="not a diffusion autoencoder"):
        plain.generate((16, 16), [0], latents=z[:1])
    assert not hasattr(plain.denoiser, "encode_images")


def test_fit_latent_prior_samples_match_the_latents():
    """Refitting the prior on a fixed latent set: its samples reproduce the set's mean and std."""
    from lightning_infdiff.denoisers.latent_prior import fit_latent_prior

    torch.manual_seed(0)
    m, s = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.3, 0.6, 0.2])
    latents = m + s * torch.randn(2000, 3, generator=torch.Generator().manual_seed(3))
    prior = LatentPrior(3, hidden=64, depth=2, emb_dim=32)
    losses = fit_latent_prior(prior, latents, steps=600, batch_size=256, lr=3e-3)
    assert sum(losses[-50:]) / 50 < 0.8 * sum(losses[:50]) / 50  # v-MSE has an irreducible floor
    out = prior.sample(range(1000), steps=50)
    torch.testing.assert_close(out.mean(0), m, atol=0.1, rtol=0)
    torch.testing.assert_close(out.std(0), s, atol=0.1, rtol=0.25)
    with pytest.raises(ValueError, match="latents must be"):
        fit_latent_prior(prior, torch.randn(5, 4))


def test_encoder_lift_is_fp32_and_its_blocks_bf16_under_autocast():
    """The encoder's lift from the data's channels runs in fp32 under bf16 autocast; its sparse
    blocks still receive bf16 points (as the decoder's, see test_sparse_operator)."""
    model = tiny()
    seen = {}
    model.encoder.lift.register_forward_hook(lambda m, i, o: seen.setdefault("lift", (i[0].dtype, o.dtype)) and None)
    model.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.setdefault("block", i[0].dtype) and None)
    idx, coords = subset(2, (16, 16), 100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model.encode(torch.randn(2, 100, 1), coords, (16, 16))
    z.float().sum().backward()
    assert seen == {"lift": (torch.float32, torch.float32), "block": torch.bfloat16}
