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
autoencoder. Here it is trained in the same run on ``stop_gradient(z)`` (its loss is added
by :class:`~lightning_infdiff.lit.DiffusionModule`), so one ``fit`` yields a model that samples;
the gradient stop keeps the prior from shaping the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..coords import coords_to_index
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

    Called like any denoiser with ``cond = z (B, latent_dim)``. The LightningModule draws
    ``z = encode(x_0 at an independent coordinate subset)`` in training and ``z ~`` the prior
    (:meth:`sample_latents`) when sampling unconditionally; :meth:`encode` of a real image
    gives reconstructions, also at other resolutions (∞-Diff's super-resolution, Fig. 8).

    Args:
        latent_dim: width ``D`` of the latent (∞-Diff: 1024 at 256²).
        encoder_channel_mult: inner-grid width multipliers of the encoder (default: the denoiser's).
        encoder_res_blocks: residual blocks per encoder level.
        prior_hidden: hidden width of the latent prior's MLP.
        prior_depth: hidden layers of the latent prior's MLP.
        prior_steps: DDIM steps when sampling latents.
        **kwargs: the :class:`SparseNeuralOperator` arguments (``num_classes`` must be 0).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        train_resolution: int = 64,
        channels: int = 64,
        depth: int = 3,
        kernel_size: int = 7,
        mlp_ratio: int = 2,
        knn_neighbours: int = 3,
        inner_resolution: int = 32,
        inner_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16, 8),
        dropout: float = 0.1,
        dropout_resolution: int = 16,
        head_channels: int = 64,
        emb_dim: int = 256,
        sparse_backend: str = "auto",
        zero_init_output: bool = True,
        latent_dim: int = 128,
        encoder_channel_mult: Sequence[int] | None = None,
        encoder_res_blocks: int = 1,
        prior_hidden: int = 512,
        prior_depth: int = 6,
        prior_steps: int = 100,
    ) -> None:
        if latent_dim < 1:
            raise ValueError(f"SparseAutoencoder needs latent_dim >= 1, got {latent_dim}")
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, num_classes=0, train_resolution=train_resolution,
            channels=channels, depth=depth, kernel_size=kernel_size, mlp_ratio=mlp_ratio,
            knn_neighbours=knn_neighbours, inner_resolution=inner_resolution, inner_channels=inner_channels,
            channel_mult=channel_mult, num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
            dropout=dropout, dropout_resolution=dropout_resolution, head_channels=head_channels, emb_dim=emb_dim,
            sparse_backend=sparse_backend, zero_init_output=zero_init_output, latent_dim=latent_dim,
        )
        self.prior_steps = prior_steps
        self.encoder = SparseEncoder(
            in_channels, latent_dim, train_resolution, channels, depth, kernel_size, mlp_ratio, knn_neighbours,
            inner_resolution, inner_channels, tuple(encoder_channel_mult or channel_mult), encoder_res_blocks,
            emb_dim, sparse_backend,
        )
        self.prior = LatentPrior(latent_dim, prior_hidden, prior_depth)

    def encode(self, values: Tensor, coords: Tensor, grid: tuple[int, int]) -> Tensor:
        """Latent ``z (B, D)`` of clean values at any subset of pixel centres of any grid."""
        self.check_inputs(values, coords, torch.zeros(values.shape[0], device=values.device), grid)
        return self.encoder(values, coords, grid)

    def prior_loss(self, z: Tensor) -> Tensor:
        """Latent prior's per-example loss ``(B,)`` on (detached) latents."""
        return self.prior.loss(z.detach())

    def sample_latents(self, seeds: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """``len(seeds)`` latents from the prior, one per seed (batch-size independent)."""
        return self.prior.sample(seeds, self.prior_steps, device)
