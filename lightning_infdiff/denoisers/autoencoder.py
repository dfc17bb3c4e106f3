"""∞-Diff as a diffusion autoencoder: sparse encoder, latent-scaled denoiser, latent prior.

∞-Diff section 4.4 / appendix A: "sparsely sampled data are encoded to small latent vectors
and used to condition our pixel-level infinite-dimensional diffusion model, allowing better
estimation of the denoised data at high time steps. Subsequently, a small diffusion model is
quickly trained to model these latents. Our encoder is the downsampling part of our
architecture." The construction follows Preechakul et al. (2022):

* :class:`SparseEncoder` is the down half of the sparse operator on the *clean* image at an
  independent coordinate subset: sparse blocks on the points, inverse-distance kNN onto the
  fixed inner grid, the ADM U-Net's downsampling path there, global average pooling and a
  linear map to ``z``. A LayerNorm without affine parameters makes every latent zero-mean and
  unit-variance over its ``D`` entries, so the latent prior sees a well-scaled input
  without dataset statistics (Preechakul et al. normalise with the dataset's mean and std).
* the denoiser is :class:`~.sparse_operator.SparseNeuralOperator` with ``latent_dim = D``:
  ``z`` scales the normalised features of every sparse block and enters the U-Net embedding.
* :class:`~.latent_prior.LatentPrior` models ``p(z)`` for unconditional sampling.

Deviation, with its reason: ∞-Diff and Preechakul et al. train the latent prior after the
autoencoder. Here it is trained in the same run on ``stop_gradient(z)`` (its loss is the
denoiser's auxiliary loss, added to the diffusion loss), so one ``fit`` yields a model that samples;
the gradient stop keeps the prior from shaping the encoder.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..batch import FieldBatch
from ..coords import coords_to_index, full_coords, gather, index_to_coords
from .latent_prior import LatentPrior
from .layers.adm import Downsample, ResBlock, group_norm
from .layers.knn import knn_interpolate, lattice_knn
from .layers.precision import autocast_dtype, in_param_dtype
from .layers.sparse_conv import PointLattice
from .sparse_operator import SparseConvBlock, SparseNeuralOperator, inner_grid_for

__all__ = ["SparseAutoencoder", "SparseEncoder"]


class SparseEncoder(nn.Module):
    """The down half of the sparse operator as an image encoder ``(values, coords) -> z``.

    Args:
        in_channels: channels of the image.
        latent_dim: width ``D`` of ``z``.
        train_resolution: grid side the sparse kernels are defined at.
        channels: width of the sparse level.
        depth: sparse blocks.
        kernel_size: odd depthwise kernel size at ``train_resolution``.
        mlp_ratio: hidden width of the point MLPs in units of ``channels``.
        knn_neighbours: ``k`` of the interpolation onto the inner grid.
        inner_resolution: side of the inner grid.
        inner_channels: width of the first inner level.
        channel_mult: width multipliers of the inner levels (2x downsampling between).
        num_res_blocks: residual blocks per inner level.
        emb_dim: width of the (learned, constant) embedding the blocks are modulated by.
        sparse_backend: sparse convolution backend (see :mod:`.layers.sparse_conv`).
    """

    def __init__(
        self, in_channels: int, latent_dim: int, train_resolution: int = 64, channels: int = 64, depth: int = 3,
        kernel_size: int = 7, mlp_ratio: int = 2, knn_neighbours: int = 3, inner_resolution: int = 32,
        inner_channels: int = 64, channel_mult: Sequence[int] = (1, 2, 4, 8), num_res_blocks: int = 1,
        emb_dim: int = 128, sparse_backend: str = "auto",
    ) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.kernel_size, self.train_resolution = kernel_size, train_resolution
        self.knn_neighbours, self.inner_resolution, self.sparse_backend = knn_neighbours, inner_resolution, sparse_backend
        self.inner_multiple = 2 ** (len(channel_mult) - 1)
        self.emb = nn.Parameter(torch.randn(emb_dim))  # no noise level: a learned constant embedding
        self.lift = nn.Linear(in_channels, channels)
        self.blocks = nn.ModuleList(
            SparseConvBlock(channels, emb_dim, kernel_size, train_resolution, mlp_ratio) for _ in range(depth)
        )
        self.to_grid = nn.Conv2d(channels, inner_channels, 1)
        layers: list[nn.Module] = []
        ch = inner_channels
        for lvl, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(ch, inner_channels * mult, emb_dim))
                ch = inner_channels * mult
            if lvl < len(channel_mult) - 1:
                layers.append(Downsample(ch))
        self.grid_layers = nn.ModuleList(layers)
        self.out_norm = group_norm(ch)
        self.out = nn.Linear(ch, latent_dim)

    def forward(self, values: Tensor, coords: Tensor, grid: tuple[int, int]) -> Tensor:
        """Clean ``values (B, N, C)`` at pixel-centre ``coords (B, N, 2)`` of ``grid`` -> ``z (B, D)``."""
        b = values.shape[0]
        inner = inner_grid_for(grid, self.inner_resolution, self.inner_multiple)
        indices = coords_to_index(coords, grid)
        lattice = PointLattice.build(indices, grid, self.kernel_size, self.train_resolution, self.sparse_backend)
        nbr, weight = lattice_knn(indices, grid, inner, self.knn_neighbours)
        emb = self.emb.expand(b, -1)
        # lift from the data's channels in fp32 (see in_param_dtype), the blocks in autocast's dtype
        x = in_param_dtype(self.lift, values).to(autocast_dtype(values))
        for blk in self.blocks:
            x = blk(x, emb, lattice)
        h = self.to_grid(knn_interpolate(x, nbr, weight).view(b, inner[0], inner[1], -1).permute(0, 3, 1, 2))
        for layer in self.grid_layers:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        pooled = F.silu(self.out_norm(h)).mean(dim=(-2, -1))
        return F.layer_norm(self.out(pooled).float(), (self.out.out_features,))


class SparseAutoencoder(SparseNeuralOperator):
    """∞-Diff's diffusion autoencoder: :class:`SparseEncoder` + latent-scaled denoiser + prior.

    Called like any denoiser with ``cond = z (B, latent_dim)``. Its conditioning hooks make it
    one to the LightningModule: in training :meth:`condition` encodes ``x_0`` at an independent
    coordinate subset and :meth:`auxiliary_losses` adds the prior's loss; :meth:`sampling_condition`
    draws ``z`` from the prior (or decodes given latents). :meth:`encode_images` of a real image
    gives reconstructions, also at other resolutions (∞-Diff's super-resolution, Fig. 8).

    Args:
        latent_dim: width ``D`` of the latent (∞-Diff: 1024 at 256²).
        encoder_channel_mult: inner-grid width multipliers of the encoder (default: the denoiser's).
        encoder_res_blocks: residual blocks per encoder level.
        prior_hidden: hidden width of the latent prior's MLP.
        prior_depth: hidden layers of the latent prior's MLP.
        prior_steps: DDIM steps when sampling latents.
        prior_weight: weight of the latent prior's loss in the training loss.
        **operator: the :class:`SparseNeuralOperator` arguments, with its defaults (no ``num_classes``:
            the latent is the condition); the encoder shares its sparse and inner-grid settings.
    """

    supports_guidance = False

    def __init__(
        self,
        latent_dim: int = 128,
        encoder_channel_mult: Sequence[int] | None = None,
        encoder_res_blocks: int = 1,
        prior_hidden: int = 512,
        prior_depth: int = 6,
        prior_steps: int = 100,
        prior_weight: float = 1.0,
        **operator: Any,
    ) -> None:
        if latent_dim < 1:
            raise ValueError(f"SparseAutoencoder needs latent_dim >= 1, got {latent_dim}")
        if prior_weight < 0:
            raise ValueError(f"SparseAutoencoder needs prior_weight >= 0, got {prior_weight}")
        if operator.get("num_classes"):
            raise ValueError("SparseAutoencoder is conditioned on its latent: num_classes must be 0")
        operator.pop("num_classes", None)
        super().__init__(num_classes=0, latent_dim=latent_dim, **operator)
        a = inspect.signature(SparseNeuralOperator.__init__).bind(self, **operator)
        a.apply_defaults()
        op = a.arguments
        self.prior_steps, self.prior_weight = prior_steps, prior_weight
        self.encoder = SparseEncoder(
            op["in_channels"], latent_dim, op["train_resolution"], op["channels"], op["depth"], op["kernel_size"],
            op["mlp_ratio"], op["knn_neighbours"], op["inner_resolution"], op["inner_channels"],
            tuple(encoder_channel_mult or op["channel_mult"]), encoder_res_blocks, op["emb_dim"], op["sparse_backend"],
        )
        self.prior = LatentPrior(latent_dim, prior_hidden, prior_depth)

    def encode(self, values: Tensor, coords: Tensor, grid: tuple[int, int]) -> Tensor:
        """Latent ``z (B, D)`` of clean values at any subset of pixel centres of any grid."""
        self.check_inputs(values, coords, torch.zeros(values.shape[0], device=values.device), grid)
        return self.encoder(values, coords, grid)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Latents ``(B, D)`` of images ``(B, C, H, W)`` in ``[-1, 1]`` at their own grid."""
        device = next(self.parameters()).device
        return self.condition(FieldBatch(images.to(device).float()), train=False)

    # ------------------------------------------------------------------ conditioning hooks
    def condition(self, batch: FieldBatch, train: bool, drop_prob: float = 0.0) -> Tensor:
        """``z = encode(x_0)``: in training at an independent random coordinate subset of the same
        size as the denoiser's (∞-Diff section 4.4), otherwise on the full grid."""
        image, grid = batch.image, batch.grid
        b, n = len(batch), batch.num_points
        enc_idx = None
        if train and batch.indices is not None:
            enc_idx = torch.rand(b, grid[0] * grid[1], device=image.device).argsort(dim=1)[:, :n]
        coords = full_coords(b, grid, image.device) if enc_idx is None else index_to_coords(enc_idx, grid)
        return self.encode(gather(image, enc_idx), coords, grid)

    def auxiliary_losses(self, cond: Tensor | None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The latent prior's loss on ``stop_gradient(z)``, weighted by ``prior_weight``."""
        if cond is None:
            return {}
        return {"prior_loss": self.prior_weight * self.prior.loss(cond.detach(), generator=generator).mean()}

    def sampling_condition(
        self, seeds: list[int], labels: Tensor | None, latents: Tensor | None, device: torch.device
    ) -> Tensor:
        """The given latents, or one latent per seed from the prior (batch-size independent)."""
        if labels is not None:
            raise ValueError("a diffusion autoencoder takes no labels: pass latents (or none) instead")
        if latents is None:
            latents = self.sample_latents(seeds, device)
        if latents.shape[0] != len(seeds):
            raise ValueError(f"got {latents.shape[0]} latents for {len(seeds)} seeds")
        return latents.to(device)

    def prior_loss(self, z: Tensor) -> Tensor:
        """Latent prior's per-example loss ``(B,)`` on (detached) latents."""
        return self.prior.loss(z.detach())

    def sample_latents(self, seeds: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """``len(seeds)`` latents from the prior, one per seed (batch-size independent)."""
        return self.prior.sample(seeds, self.prior_steps, device)
