"""ADM U-Net baseline on pixel grids of any size (Nichol and Dhariwal 2021).

The network is :class:`~lightning_infdiff.denoisers.unet.ADMUNet`, the same module that forms
the inner grid of the ∞-Diff sparse neural operator (one implementation, two uses). ``ADMUNet``
needs sides divisible by ``2**(levels - 1)``; this wrapper zero-pads the canvas at the
bottom/right (the mask channel is 0 there, i.e. "no data") and crops the output, so the
baseline runs at odd and non-square grids too. A conv U-Net ties its receptive field to the
pixel size: at 2x it sees half the image per kernel, which is the baseline's known weakness
for resolution transfer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import GridDenoiser
from .layers.embeddings import NoiseEmbedding
from .unet import ADMUNet

__all__ = ["ADMUNetDenoiser"]


class ADMUNetDenoiser(GridDenoiser):
    """ADM U-Net as a grid denoiser; pads to the network's stride and crops back.

    Args:
        in_channels: channels of the noisy field.
        out_channels: prediction channels (defaults to ``in_channels``).
        num_classes: classes for conditioning (``0``: none; label ``num_classes`` = null).
        resolution: nominal training side (places attention and dropout only).
        channels: first-level width.
        channel_mult: per-level width multipliers (one 2x downsampling between levels).
        num_res_blocks: residual blocks per level.
        attention_resolutions: sides (at ``resolution``) with self-attention.
        dropout: dropout probability at sides ``<= dropout_resolution`` (simple diffusion 3.4).
        dropout_resolution: largest side with dropout.
        head_channels: channels per attention head.
        emb_dim: width of the logSNR/class embedding.
        zero_init_output: zero-initialise the output convolution (ADM does).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        num_classes: int = 0,
        resolution: int = 32,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16, 8),
        dropout: float = 0.1,
        dropout_resolution: int = 16,
        head_channels: int = 64,
        emb_dim: int = 256,
        zero_init_output: bool = True,
    ) -> None:
        super().__init__(in_channels, out_channels, num_classes)
        self.stride = 2 ** (len(channel_mult) - 1)
        self.embed = NoiseEmbedding(emb_dim, num_classes)
        self.net = ADMUNet(
            self.grid_in_channels, self.out_channels, emb_dim, resolution, channels, tuple(channel_mult),
            num_res_blocks, tuple(attention_resolutions), dropout, dropout_resolution, head_channels,
            zero_out=zero_init_output,
        )

    def forward_grid(
        self, canvas: Tensor, logsnr: Tensor, cond: Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> Tensor:
        """``(B, C_in + 1, H, W)`` -> ``(B, C_out, H, W)``; any ``H, W >= 2``."""
        h, w = canvas.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        x = F.pad(canvas, (0, pw, 0, ph)) if ph or pw else canvas
        out = self.net(x, self.embed(logsnr, cond))
        return out[..., :h, :w].contiguous(memory_format=torch.contiguous_format)
