"""A small diffusion model over the latent vectors of a diffusion autoencoder.

∞-Diff section 4.4 trains the image model as a diffusion autoencoder (Preechakul et al. 2022):
an encoder maps the clean image to a latent ``z`` that conditions the denoiser, and "a small
diffusion model is quickly trained to model these latents" so that unconditional samples are
drawn as ``z ~ p(z)`` then ``x ~ p(x | z)``. Following Preechakul et al. (section 3.3, their
"MLP + skip" latent DDIM), the network is an MLP whose every layer also sees the noisy input
``z_t`` (a skip from the input), with FiLM conditioning on the noise level.

The latent process is Gaussian diffusion on ``R^D`` with a cosine logSNR schedule:
``z_t = α_t z_0 + σ_t ε`` with ``α_t² = sigmoid(λ_t)``, ``σ_t² = sigmoid(-λ_t)`` (Kingma et al.
2021, eq. 3 in logSNR form). The network predicts ``v = α_t ε - σ_t z_0`` (Salimans and Ho
2022, section 4) and is trained with ``E ||v̂(z_t, λ_t) - v||²``. Sampling is deterministic DDIM
(Song et al. 2021, eq. 12 with ``η = 0``; :func:`lightning_infdiff.samplers.sample_ddim`, the image
samplers' own) on ``ẑ_0 = α_t z_t - σ_t v̂``, ``ε̂ = σ_t z_t + α_t v̂``: ``z_s = α_s ẑ_0 + σ_s ε̂``.

Why v and not Preechakul et al.'s ε: with ε-prediction ``ẑ_0 = (z_t - σ_t ε̂) / α_t`` divides
the network's error by ``α_t ≈ e^{λ/2}``, about 5e-4 at the cosine schedule's ``λ_min = -15``;
an ε-prior trained here drew latents with a standard deviation of 215 instead of 1. The
v-form's ``ẑ_0`` and ``ε̂`` are bounded maps of ``(z_t, v̂)`` at every noise level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..samplers import sample_ddim
from ..schedules import CosineSchedule, alpha_sigma
from .layers.embeddings import logsnr_embedding

__all__ = ["LatentPrior", "ddim_vectors", "fit_latent_prior", "latent_noise"]

VFn = Callable[[Tensor, Tensor], Tensor]


def latent_noise(seeds: Sequence[int], dim: int, device: torch.device | str | None = None) -> Tensor:
    """Standard-normal starting latents ``(B, dim)``, row ``i`` drawn from its own seed.

    Each row depends only on its seed (not on the batch), so latents, and the images decoded
    from them, do not change with the batch size or the number of processes. The seed is
    mixed with a constant so the latent draw is not the same stream as the image noise of
    the same seed.
    """
    rows = [torch.randn(dim, generator=torch.Generator().manual_seed(int(s) * 1_000_003 + 977)) for s in seeds]
    return torch.stack(rows).to(device)


@torch.no_grad()
def ddim_vectors(v_fn: VFn, z: Tensor, logsnrs: Tensor) -> Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12, ``η = 0``) on vectors, from a v-predictor.

    The steps are :func:`lightning_infdiff.samplers.sample_ddim` over ``λ_0 .. λ_{K-1}`` in fp64
    (the network runs in fp32); the result is the clean estimate ``ẑ_0`` of the state at
    ``λ_{K-1}``, the last level the network sees (``K`` network evaluations in all).

    Args:
        v_fn: ``(z_t (B, D), logsnr (B,)) -> v̂ (B, D)``.
        z: starting noise ``(B, D)`` at ``logsnrs[0]``.
        logsnrs: increasing noise levels ``λ_0 < λ_1 < ... < λ_K`` (fp64 or fp32), ``K >= 1``.

    Returns:
        The estimate ``ẑ_0`` ``(B, D)`` in fp32.
    """
    z = z.double()
    b = z.shape[0]
    lams = logsnrs.double()
    if lams.numel() < 2:
        raise ValueError(f"logsnrs must hold at least 2 noise levels, got {lams.numel()}")

    def model(z_t: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
        a, s = alpha_sigma(lam)
        v = v_fn(z_t.float(), lam.float().expand(b)).double()
        return a * z_t - s * v, s * z_t + a * v

    z = sample_ddim(model, z, lams[:-1], noise=lambda: torch.zeros_like(z))  # deterministic: never drawn
    return model(z, lams[-2])[0].float()


class LatentPrior(nn.Module):
    """MLP-with-skips v-predictor and its diffusion (see the module docstring).

    Args:
        latent_dim: dimension ``D`` of the latents.
        hidden: width of the hidden layers (Preechakul et al.: 2048 for ``D = 512``).
        depth: number of hidden layers (Preechakul et al.: 10 to 20).
        emb_dim: width of the noise-level embedding.
        logsnr_min: logSNR at ``t = 1`` of the cosine schedule.
        logsnr_max: logSNR at ``t = 0``.
    """

    def __init__(
        self, latent_dim: int, hidden: int = 512, depth: int = 6, emb_dim: int = 128,
        logsnr_min: float = -15.0, logsnr_max: float = 15.0,
    ) -> None:
        super().__init__()
        if latent_dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"latent_dim, hidden and depth must be positive, got {latent_dim}, {hidden}, {depth}")
        self.latent_dim, self.emb_dim = latent_dim, emb_dim
        self.schedule = CosineSchedule(logsnr_min, logsnr_max)
        self.time = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        widths = [latent_dim] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(widths[i] + (latent_dim if i > 0 else 0), widths[i + 1]) for i in range(depth)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(depth))
        self.films = nn.ModuleList(nn.Linear(emb_dim, 2 * hidden) for _ in range(depth))
        self.out = nn.Linear(hidden + latent_dim, latent_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z_t: Tensor, logsnr: Tensor) -> Tensor:
        """``v̂(z_t, λ)``: ``(B, D)``, ``(B,)`` -> ``(B, D)``."""
        if z_t.dim() != 2 or z_t.shape[1] != self.latent_dim:
            raise ValueError(f"latents must be (B, {self.latent_dim}), got {tuple(z_t.shape)}")
        emb = F.silu(self.time(logsnr_embedding(logsnr, self.emb_dim, scale=1.0)))
        h = z_t
        for i, (lin, norm, film) in enumerate(zip(self.layers, self.norms, self.films, strict=True)):
            h = lin(h if i == 0 else torch.cat([h, z_t], dim=-1))
            scale, shift = film(emb).chunk(2, dim=-1)
            h = F.silu(norm(h) * (1 + scale) + shift)
        return self.out(torch.cat([h, z_t], dim=-1))

    def loss(self, z0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-example v-MSE ``(B,)`` at ``t ~ U(0, 1)`` (the latent model's training loss)."""
        b = z0.shape[0]
        dev = z0.device
        t = torch.rand(b, generator=generator, device="cpu" if generator is not None else dev).to(dev)
        lam = self.schedule.logsnr(t.double()).float()
        eps = torch.randn(z0.shape, generator=generator, device="cpu" if generator is not None else dev).to(dev)
        a, s = alpha_sigma(lam)
        a, s = a[:, None], s[:, None]
        z_t = a * z0.float() + s * eps
        v = a * eps - s * z0.float()
        return (self.forward(z_t, lam).float() - v).pow(2).mean(dim=1)

    @torch.no_grad()
    def sample(self, seeds: Sequence[int], steps: int = 50, device: torch.device | str | None = None) -> Tensor:
        """Draw ``len(seeds)`` latents ``(B, D)`` with ``steps`` DDIM steps (time-uniform)."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        z = latent_noise(seeds, self.latent_dim, device)
        t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        lams = self.schedule.logsnr(t).to(z.device)
        with torch.autocast(z.device.type, enabled=False):
            return ddim_vectors(self.forward, z, lams)


def fit_latent_prior(
    prior: LatentPrior, latents: Tensor, steps: int = 2000, batch_size: int = 256, lr: float = 1e-3, seed: int = 0,
    progress: bool = False,
) -> list[float]:
    """Train ``prior`` on a fixed set of latents, as ∞-Diff and Preechakul et al. do after
    the autoencoder has been trained ("a small diffusion model is quickly trained to model
    these latents", ∞-Diff section 4.4).

    Args:
        prior: the latent model to train (in place).
        latents: ``(M, D)`` encoder latents of training images.
        steps: optimiser steps (Adam, cosine decay of ``lr`` to 0).
        batch_size: latents per step (drawn with replacement).
        lr: peak learning rate.
        seed: seed of the batches, noise levels and noise.
        progress: show a progress bar.

    Returns:
        The training loss of every step.
    """
    from tqdm.auto import tqdm

    if latents.dim() != 2 or latents.shape[1] != prior.latent_dim:
        raise ValueError(f"latents must be (M, {prior.latent_dim}), got {tuple(latents.shape)}")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got {steps} and {batch_size}")
    gen = torch.Generator().manual_seed(seed)
    device = next(prior.parameters()).device
    data = latents.detach().float().to(device)
    opt = torch.optim.Adam(prior.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    was_training = prior.training
    prior.train()
    losses = []
    for _ in tqdm(range(steps), desc="latent prior", disable=not progress):
        pick = torch.randint(len(data), (batch_size,), generator=gen).to(device)
        loss = prior.loss(data[pick], generator=gen).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach().item())
    prior.train(was_training)
    return losses
