"""ADM-style grid U-Net (Nichol and Dhariwal 2021), the inner grid network of ∞-Diff.

∞-Diff appendix A: the grid part is ADM's U-Net at a fixed resolution (128² for 256² data),
128 channels doubled per level up to 8x, attention at 16² and 8², dropout at those
resolutions only (Hoogeboom et al. 2023). :class:`ADMUNet` is the bare network on an
embedding; :class:`~.unet_denoiser.ADMUNetDenoiser` wraps it as a grid denoiser so it can also be
trained directly on pixel grids (it then ties its receptive field to the pixel size).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers.adm import AttentionBlock, Downsample, ResBlock, Upsample, group_norm
from .layers.common import head, output_head

__all__ = ["ADMUNet"]


class ADMUNet(nn.Module):
    """U-Net with residual blocks, attention at low resolutions and skip connections.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        emb_dim: width of the conditioning embedding passed to :meth:`forward`.
        resolution: nominal input side, used only to decide where attention and dropout go.
        channels: width of the first level.
        channel_mult: width multiplier per level (one level per entry, 2x downsampling between).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sides that get self-attention (ADM: 16, 8).
        dropout: dropout probability, applied only where the side is ``<= dropout_resolution``.
        dropout_resolution: largest side that uses dropout.
        head_channels: channels per attention head.
        zero_out: zero-initialise the output convolution (ADM does).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        resolution: int = 32,
        channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16, 8),
        dropout: float = 0.1,
        dropout_resolution: int = 16,
        head_channels: int = 64,
        zero_out: bool = True,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.levels = len(channel_mult)
        self.in_conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        skips, ch, res = [channels], channels, resolution

        def block(cin: int, cout: int, res: int) -> nn.ModuleList:
            drop = dropout if res <= dropout_resolution else 0.0
            mods = [ResBlock(cin, cout, emb_dim, drop)]
            if res in attention_resolutions:
                mods.append(AttentionBlock(cout, head_channels))
            return nn.ModuleList(mods)

        for lvl, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, channels * mult, res))
                ch = channels * mult
                skips.append(ch)
            if lvl < self.levels - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout if res <= dropout_resolution else 0.0)])
        self.mid.append(AttentionBlock(ch, head_channels))
        self.mid.append(ResBlock(ch, ch, emb_dim, dropout if res <= dropout_resolution else 0.0))
        for lvl, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                mods = block(ch + skips.pop(), channels * mult, res)
                ch = channels * mult
                if lvl > 0 and i == num_res_blocks:
                    mods.append(Upsample(ch))
                self.up.append(mods)
            res *= 2
        self.out_norm, self.out_conv = output_head(group_norm(ch), nn.Conv2d(ch, out_channels, 3, padding=1), zero_out)

    @staticmethod
    def _run(mods: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
        for m in mods:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
        return h

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x (B, C_in, H, W)`` with ``H, W`` divisible by ``2**(levels-1)``, ``emb (B, E)``."""
        f = 2 ** (self.levels - 1)
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"grid {tuple(x.shape[-2:])} must be divisible by {f}")
        h = self.in_conv(x.contiguous(memory_format=torch.channels_last))
        hs = [h]
        for mods in self.down:
            h = self._run(mods, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for mods in self.up:
            h = self._run(mods, torch.cat([h, hs.pop()], dim=1), emb)
        return head(self.out_norm, self.out_conv, h, torch.nn.functional.silu)
