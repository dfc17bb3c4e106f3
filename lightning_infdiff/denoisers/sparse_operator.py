"""∞-Diff's multi-scale sparse neural operator denoiser (Bond-Taylor and Willcocks 2024).

Section 4.2 / Fig. 4 and appendix A: sparse operator blocks on the raw sampled points capture
local detail; the points are interpolated onto a fixed regular grid where an ADM U-Net gathers
global context; the grid is read back at the points and sparse up blocks with skips finish::

    lift C_in->C ─ down blocks ×D ─ kNN (k=3) to G×G ─ U-Net ─ bilinear at points ─ up blocks ×D ─ out
                        └──────────────── skips ────────────────────────────────────┘

A sparse block (appendix A) is ``x += conv(ModLN(x))``, ``x += MLP(ModLN(x))`` where ``conv``
is the depthwise sparse convolution of eq. (16) normalised by sampled-neighbour counts
(:mod:`.layers.sparse_conv`). Every point-wise layer runs on the ``N`` points only. The projections
to and from the inner grid run on the grid side: a linear map commutes with the kNN and
bilinear interpolations (their weights sum to one), so this equals projecting at the points.

Resolution transfer: the kernel is defined at ``train_resolution`` pixels per domain unit; at
another pixel density it is resampled (odd size per axis) and the neighbour-count normalisation
keeps the response. The inner grid has ``inner_resolution`` cells per domain unit over the
points' window (:func:`inner_grid_for`): ``G x G`` on the unit square, wider on a ``wide`` canvas
(:mod:`lightning_infdiff.coords`), so the same weights run at any density and aspect ratio with
kernels, inner grid and coordinates in one geometry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from ..coords import Grid, as_grid, coords_to_index, interpolate_at, pixel_centres
from .base import Denoiser
from .layers.common import ModulatedLayerNorm, PointMLP, head, output_head
from .layers.embeddings import NoiseEmbedding
from .layers.knn import knn_interpolate, lattice_knn
from .layers.precision import autocast_dtype, in_param_dtype
from .layers.sparse_conv import SPARSE_BACKENDS, PointLattice, SparseDepthwiseConv2d
from .unet import ADMUNet

__all__ = ["SparseConvBlock", "SparseNeuralOperator", "inner_grid_for"]


def inner_grid_for(grid: tuple[int, int], resolution: int, multiple: int = 1) -> Grid:
    """The regular grid of ``resolution`` cells per domain unit over ``grid``'s window.

    On the unit square (any plain or ``stretch`` grid, or a square one) it is ``resolution`` square.
    On a ``wide`` canvas each side is ``resolution`` times the window's extent, rounded up to a
    multiple of ``multiple`` (the U-Net's downsampling), centred like every ``wide`` grid, so it
    covers the window with the training cell size.
    """
    g = as_grid(grid)
    if g.unit:
        return Grid(resolution, resolution, g.canvas)
    ey, ex = g.extent
    gh, gw = (multiple * math.ceil(resolution * e / multiple - 1e-9) for e in (ey, ex))
    return Grid(gh, gw, g.canvas)


class SparseConvBlock(nn.Module):
    """Sparse residual block: ``x += conv(ModLN(x))``; ``x += MLP(ModLN(x))`` (∞-Diff app. A).

    Args:
        channels: feature width ``C``.
        emb_dim: conditioning embedding width.
        kernel_size: odd depthwise kernel size at ``train_resolution``.
        train_resolution: grid side the kernel is defined at.
        mlp_ratio: hidden width of the point MLP in units of ``C``.
        skip: if true, a linear layer first fuses ``[x, skip]`` (``2C -> C``), for up blocks.
    """

    def __init__(
        self, channels: int, emb_dim: int, kernel_size: int = 7, train_resolution: int = 64,
        mlp_ratio: int = 2, skip: bool = False, latent_dim: int = 0,
    ) -> None:
        super().__init__()
        self.fuse = nn.Linear(2 * channels, channels) if skip else None
        # Diffusion-autoencoder latent: scales the normalised features of both branches,
        # ``h·(1 + W z)`` (Preechakul et al. 2022, eq. 7's z_s ⊙ AdaGN), zero-initialised.
        self.zscale = nn.Linear(latent_dim, 2 * channels) if latent_dim > 0 else None
        if self.zscale is not None:
            nn.init.zeros_(self.zscale.weight)
            nn.init.zeros_(self.zscale.bias)
        self.norm1 = ModulatedLayerNorm(channels, emb_dim)
        self.conv = SparseDepthwiseConv2d(channels, kernel_size, train_resolution)
        self.norm2 = ModulatedLayerNorm(channels, emb_dim)
        self.mlp = PointMLP(channels, mlp_ratio)

    def forward(
        self, x: Tensor, emb: Tensor, lattice: PointLattice, skip: Tensor | None = None, latent: Tensor | None = None
    ) -> Tensor:
        """``x (B, N, C)`` on ``lattice``, ``emb (B, E)``, optional ``latent (B, D)`` -> ``(B, N, C)``."""
        if self.fuse is not None:
            if skip is None:
                raise ValueError("this block expects a skip connection")
            x = self.fuse(torch.cat([x, skip.to(x.dtype)], dim=-1))
        h1 = self.norm1(x, emb)
        if self.zscale is not None and latent is not None:
            s1, s2 = self.zscale(latent).unsqueeze(1).chunk(2, dim=-1)
            h1 = h1 * (1 + s1.to(h1.dtype))
        x = x + self.conv(h1, lattice).to(x.dtype)
        h2 = self.norm2(x, emb)
        if self.zscale is not None and latent is not None:
            h2 = h2 * (1 + s2.to(h2.dtype))
        return x + self.mlp(h2).to(x.dtype)


class SparseNeuralOperator(Denoiser):
    """∞-Diff denoiser: sparse operator blocks around an ADM U-Net on a fixed inner grid.

    Call as ``model(values (B,N,C_in), coords (B,N,2), logsnr (B,), grid (H,W), cond)``; the
    coordinates must be pixel centres of ``grid`` (any subset, any order).

    Args:
        in_channels: channels of the noisy field.
        out_channels: channels of the prediction (defaults to ``in_channels``).
        num_classes: classes for conditioning, ``0`` for none (label ``num_classes`` = null).
        train_resolution: grid side the sparse kernels are defined at (resized elsewhere).
        channels: width ``C`` of the sparse level (∞-Diff: 64).
        depth: sparse blocks before and after the grid network (∞-Diff: 3).
        kernel_size: odd depthwise kernel size at ``train_resolution`` (∞-Diff: 7).
        mlp_ratio: hidden width of the point MLPs in units of ``C`` (∞-Diff: 2).
        knn_neighbours: ``k`` of the inverse-distance interpolation onto the grid (∞-Diff: 3).
        inner_resolution: side of the fixed inner grid (∞-Diff: half the data side).
        inner_channels: width of the inner grid's first U-Net level (∞-Diff: 128).
        channel_mult: U-Net width multipliers per level (∞-Diff: up to 8).
        num_res_blocks: U-Net residual blocks per level.
        attention_resolutions: inner-grid sides with self-attention (∞-Diff: 16, 8).
        dropout: U-Net dropout probability, only at sides ``<= dropout_resolution``.
        dropout_resolution: largest inner-grid side with dropout (∞-Diff: 16).
        head_channels: channels per attention head.
        emb_dim: width of the logSNR/class embedding.
        sparse_backend: ``"auto"``, ``"dense"``, ``"pairs"`` or ``"torchsparse"``
            (see :mod:`.layers.sparse_conv`).
        zero_init_output: zero-initialise the output projection (prediction starts at 0).
        latent_dim: width ``D`` of a diffusion-autoencoder latent ``z`` passed as ``cond``
            (``(B, D)`` floats), ``0`` for none. It scales the features of every sparse block
            and is added to the inner U-Net's embedding. Exclusive with ``num_classes``; see
            :class:`~.autoencoder.SparseAutoencoder` for the encoder and the latent prior.
        inner_positions: add a learned linear map of the inner grid cells' domain coordinates
            (centred on the training square) to the U-Net's input, so the composition can depend
            on where a cell lies in the image plane, not only on how far it is from the window's
            edges (zero-initialised; off: the ∞-Diff architecture).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        num_classes: int = 0,
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
        latent_dim: int = 0,
        inner_positions: bool = False,
    ) -> None:
        super().__init__(in_channels, out_channels, num_classes)
        if latent_dim < 0 or (latent_dim and num_classes):
            raise ValueError(
                f"latent_dim must be >= 0 and cannot be combined with num_classes (got latent_dim={latent_dim}, "
                f"num_classes={num_classes}): a model is conditioned either on a class or on a latent"
            )
        self.latent_dim = latent_dim
        if sparse_backend not in SPARSE_BACKENDS:
            raise ValueError(f"sparse_backend must be one of {SPARSE_BACKENDS}, got {sparse_backend!r}")
        if inner_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"inner_resolution {inner_resolution} must be divisible by 2**(len(channel_mult)-1)")
        self.train_resolution = train_resolution
        self.kernel_size = kernel_size
        self.knn_neighbours = knn_neighbours
        self.inner_resolution = inner_resolution
        self.inner_multiple = 2 ** (len(channel_mult) - 1)
        self.sparse_backend = sparse_backend
        self.embed = NoiseEmbedding(emb_dim, num_classes)
        self.lift = nn.Linear(in_channels, channels)
        block_args = (channels, emb_dim, kernel_size, train_resolution, mlp_ratio)
        self.down = nn.ModuleList([SparseConvBlock(*block_args, latent_dim=latent_dim) for _ in range(depth)])
        self.to_grid = nn.Conv2d(channels, inner_channels, 1)
        self.unet = ADMUNet(
            inner_channels, inner_channels, emb_dim, inner_resolution, inner_channels, channel_mult,
            num_res_blocks, attention_resolutions, dropout, dropout_resolution, head_channels, zero_out=False,
        )
        self.inner_pos = nn.Conv2d(2, inner_channels, 1) if inner_positions else None
        if self.inner_pos is not None:
            nn.init.zeros_(self.inner_pos.weight)
            nn.init.zeros_(self.inner_pos.bias)
        self.from_grid = nn.Conv2d(inner_channels, channels, 1)
        self.up = nn.ModuleList([SparseConvBlock(*block_args, skip=True, latent_dim=latent_dim) for _ in range(depth)])
        self.latent_emb = nn.Linear(latent_dim, emb_dim) if latent_dim else None
        self.out_norm, self.out = output_head(nn.LayerNorm(channels), nn.Linear(channels, self.out_channels),
                                              zero_init_output)

    def lattice(self, indices: Tensor, grid: tuple[int, int]) -> PointLattice:
        """Neighbour structure of the points for the sparse convolutions at ``grid``."""
        return PointLattice.build(indices, grid, self.kernel_size, self.train_resolution, self.sparse_backend)

    def inner_grid(self, grid: tuple[int, int]) -> Grid:
        """The inner U-Net's grid for points on ``grid``: ``inner_resolution`` per domain unit over the
        same window (see :func:`inner_grid_for`)."""
        return inner_grid_for(grid, self.inner_resolution, self.inner_multiple)

    def forward(
        self, values: Tensor, coords: Tensor, logsnr: Tensor, grid: tuple[int, int], cond: Tensor | None = None
    ) -> Tensor:
        """Predict ``(B, N, C_out)`` at the points (see :mod:`.base` for the contract)."""
        self.check_inputs(values, coords, logsnr, grid)
        grid = as_grid(grid)
        inner = self.inner_grid(grid)
        b = values.shape[0]
        latent = None
        if self.latent_dim:
            latent, cond = cond, None
            if latent is None or latent.shape != (b, self.latent_dim) or not latent.is_floating_point():
                got = None if latent is None else (tuple(latent.shape), latent.dtype)
                raise ValueError(f"this model needs a latent cond of shape ({b}, {self.latent_dim}) floats, got {got}")
        with record_function("sno/neighbours"):  # no-grad index work, once per call
            indices = coords_to_index(coords, grid)
            lattice = self.lattice(indices, grid)
            nbr, weight = lattice_knn(indices, grid, inner, self.knn_neighbours)
        emb = self.embed(logsnr, cond)
        unet_emb = emb if latent is None else emb + self.latent_emb(latent).to(emb.dtype)

        with record_function("sno/down"):
            # lift and output projection in fp32 (see in_param_dtype), the blocks in autocast's dtype
            x = in_param_dtype(self.lift, values).to(autocast_dtype(values))
            skips = []
            for blk in self.down:
                x = blk(x, emb, lattice, latent=latent)
                skips.append(x)
        # Points -> fixed grid (inverse-distance kNN), grid network, grid -> points (bilinear).
        point_dtype = x.dtype
        with record_function("sno/to_grid"):
            z = knn_interpolate(x, nbr, weight)  # (B, Gh*Gw, C), row-major = channels-last layout
            z = self.to_grid(z.view(b, inner[0], inner[1], -1).permute(0, 3, 1, 2))
            if self.inner_pos is not None:
                cells = (pixel_centres(inner, z.device) - 0.5).T.reshape(1, 2, inner[0], inner[1])
                z = z + in_param_dtype(self.inner_pos, cells).to(z.dtype)
        with record_function("sno/unet"):
            z = self.from_grid(self.unet(z, unet_emb))
        with record_function("sno/read_back"):
            # grid_sample runs in fp32 under autocast: back to the points' dtype before the up blocks
            x = interpolate_at(z.contiguous(), coords, grid=inner).to(point_dtype)
        with record_function("sno/up"):
            for blk in self.up:
                x = blk(x, emb, lattice, skip=skips.pop(), latent=latent)
            return head(self.out_norm, self.out, x, fp32=True)
