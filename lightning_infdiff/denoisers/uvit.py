"""U-ViT grid denoiser (Hoogeboom, Heek and Salimans 2023, "simple diffusion", section 3.5, B.2).

A small convolutional U-Net brings the image down to a low-resolution level (16² for the
training grid by default), a stack of transformer blocks runs there, and convolutional stages
bring it back up with skip connections::

    [patch p | DWT] ─ ResBlocks ─ down ─ … ─ tokens (+ positions) ─ Transformer ×L ─ … ─ up ─ ResBlocks ─ [unpatch | DWT⁻¹]
                         └──────────────── skips (only around the conv stages) ───────────────┘

Input transforms (section 3.3, both optional): a ``p x p`` stride-``p`` patching conv with a
transposed conv at the output, or an orthonormal ``L``-level Haar DWT
(:class:`~lightning_infdiff.denoisers.layers.dwt.HaarDWT`) at the input and its exact inverse
at the output (the paper uses the 5/3 wavelet; Haar keeps the transform local and orthonormal).

Resolution independence: the number of downsamplings is fixed, so a 2x larger grid gives a 2x
larger token grid; positions come from the tokens' continuous pixel-centre coordinates in
``[0, 1]^2`` (never a learned table, which would tie the model to one token count: the paper's
``pos_emb`` parameter is the one part we replace), either as Fourier features added to the
tokens (``position="fourier"``, the default) or as axial rotary embeddings of the queries and
keys in every attention layer (``position="rope"``,
:class:`~lightning_infdiff.denoisers.layers.rope.AxialRoPE`), which make the attention scores
depend on coordinate offsets only. Grids that are not a
multiple of the total stride are zero-padded at the bottom/right (the mask channel is 0 there,
i.e. "no data") and the output is cropped back. Dropout is used only at levels whose side at
the nominal ``resolution`` is at most ``dropout_resolution`` (section 3.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..coords import as_grid
from .base import GridDenoiser
from .layers.adm import ResBlock, group_norm
from .layers.common import head, output_head
from .layers.dwt import HaarDWT
from .layers.embeddings import NoiseEmbedding
from .layers.fourier import FourierFeatures
from .layers.rope import AxialRoPE, RoPETransformerBlock

__all__ = ["UViTDenoiser"]


class _Up(nn.Module):
    """Nearest upsampling to an exact size, then a 3x3 conv (sizes may be odd)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UViTDenoiser(GridDenoiser):
    """U-ViT: conv stages down to ``transformer_resolution``, transformer, conv stages up.

    Args:
        in_channels: channels of the noisy field.
        out_channels: prediction channels (defaults to ``in_channels``).
        num_classes: classes for conditioning (``0``: none; label ``num_classes`` = null).
        resolution: nominal training side (sets the number of downsamplings and where dropout goes).
        transformer_resolution: side of the token grid at ``resolution`` (paper: 16).
        patch_size: stride of a patching conv at the input (transposed conv at the output;
            section 3.3's simpler alternative to the DWT); 1 disables it.
        dwt_levels: levels of an orthonormal Haar DWT at the input (inverse at the output);
            0 disables it. Exclusive with ``patch_size > 1``.
        channels: width of the first conv level.
        channel_mult: width multipliers of the conv levels; the transformer width is
            ``channels * transformer_mult``.
        transformer_mult: transformer width multiplier.
        num_res_blocks: ResBlocks per conv level (down and up).
        num_transformer_blocks: transformer blocks at the token level.
        heads: attention heads.
        mlp_ratio: transformer MLP expansion (paper: 4).
        dropout: conv-level dropout, only where the side is ``<= dropout_resolution``.
        transformer_dropout: dropout in the transformer MLPs (paper: 0.2 at 512²).
        dropout_resolution: largest side (at ``resolution``) with dropout.
        position: ``fourier`` (Fourier features of token centres added to the tokens) or
            ``rope`` (axial rotary embeddings of the token centres on queries and keys).
        pos_freqs: octaves of the positional Fourier features (lowest: 1/2 cycle per side).
        rope_min_freq: lowest RoPE frequency, cycles per image side.
        rope_max_freq: highest RoPE frequency, cycles per image side (default
            ``transformer_resolution / 2``: a half turn per token on the training token grid).
        emb_dim: width of the logSNR/class embedding.
        zero_init_output: zero-initialise the output layer.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        num_classes: int = 0,
        resolution: int = 32,
        transformer_resolution: int = 16,
        patch_size: int = 1,
        channels: int = 64,
        channel_mult: Sequence[int] = (1,),
        transformer_mult: int = 2,
        num_res_blocks: int = 2,
        num_transformer_blocks: int = 6,
        heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        transformer_dropout: float = 0.1,
        dropout_resolution: int = 16,
        pos_freqs: int = 6,
        emb_dim: int = 256,
        zero_init_output: bool = True,
        dwt_levels: int = 0,
        position: Literal["fourier", "rope"] = "fourier",
        rope_min_freq: float = 0.5,
        rope_max_freq: float | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, num_classes)
        if dwt_levels < 0 or patch_size < 1:
            raise ValueError(f"need dwt_levels >= 0 and patch_size >= 1, got {dwt_levels}, {patch_size}")
        if dwt_levels and patch_size > 1:
            raise ValueError("choose one input transform: patch_size > 1 or dwt_levels > 0, not both")
        if position not in ("fourier", "rope"):
            raise ValueError(f"position must be 'fourier' or 'rope', got {position!r}")
        factor = 2**dwt_levels if dwt_levels else patch_size
        side = resolution // factor
        downs = 0
        while side > transformer_resolution:
            side, downs = side // 2, downs + 1
        if side != transformer_resolution or len(channel_mult) != downs:
            raise ValueError(
                f"resolution / (patch or DWT factor) = {resolution // factor} must reach transformer_resolution "
                f"{transformer_resolution} by halvings, with one channel_mult entry per halving "
                f"({downs} needed, got {len(channel_mult)})"
            )
        self.patch_size, self.stride, self.position = patch_size, factor * 2**downs, position
        self.dwt = HaarDWT(dwt_levels) if dwt_levels else None
        self.embed = NoiseEmbedding(emb_dim, num_classes)
        widths = [channels * m for m in channel_mult]
        tw = channels * transformer_mult
        first = widths[0] if widths else tw
        if self.dwt is not None:
            self.in_conv = nn.Conv2d(self.dwt.out_channels(self.grid_in_channels), first, 3, padding=1)
        else:
            self.in_conv = nn.Conv2d(self.grid_in_channels, first, patch_size if patch_size > 1 else 3,
                                     stride=patch_size, padding=0 if patch_size > 1 else 1)
        self.down_blocks, self.down_samples = nn.ModuleList(), nn.ModuleList()
        self.up_samples, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        ch, side = first, resolution // factor
        for i, wdt in enumerate(widths):
            drop = dropout if side <= dropout_resolution else 0.0
            self.down_blocks.append(nn.ModuleList(ResBlock(ch if j == 0 else wdt, wdt, emb_dim, drop)
                                                  for j in range(num_res_blocks)))
            nxt = widths[i + 1] if i + 1 < len(widths) else tw
            self.down_samples.append(nn.Conv2d(wdt, nxt, 3, stride=2, padding=1))
            ch, side = nxt, side // 2
        if position == "fourier":
            self.pos = FourierFeatures(2, pos_freqs, 0.5)
            self.pos_proj = nn.Linear(self.pos.out_dim, tw)
        else:
            if tw % heads:
                raise ValueError(f"{tw} transformer channels do not split into {heads} heads")
            self.rope = AxialRoPE(tw // heads, rope_min_freq,
                                  rope_max_freq if rope_max_freq is not None else transformer_resolution / 2)
        tdrop = transformer_dropout if side <= dropout_resolution else 0.0
        self.transformer = nn.ModuleList(RoPETransformerBlock(tw, emb_dim, heads, mlp_ratio, tdrop)
                                         for _ in range(num_transformer_blocks))
        self.mid_norm = nn.LayerNorm(tw)
        ch = tw
        for i in reversed(range(len(widths))):
            wdt = widths[i]
            side *= 2
            drop = dropout if side <= dropout_resolution else 0.0
            self.up_samples.append(_Up(ch, wdt))
            self.up_blocks.append(nn.ModuleList(ResBlock(2 * wdt, wdt, emb_dim, drop) for _ in range(num_res_blocks)))
            ch = wdt
        if self.dwt is not None:
            out = nn.Conv2d(ch, self.dwt.out_channels(self.out_channels), 3, padding=1)
        elif patch_size > 1:
            out = nn.ConvTranspose2d(ch, self.out_channels, patch_size, stride=patch_size)
        else:
            out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        self.out_norm, self.out = output_head(group_norm(ch), out, zero_init_output)

    def token_coords(self, size: tuple[int, int], grid: tuple[int, int], device: torch.device) -> Tensor:
        """Continuous ``(y, x)`` centres of the token cells in domain units (``grid``'s geometry, see
        :mod:`lightning_infdiff.coords`; the unit square for a plain tuple)."""
        g = as_grid(grid)
        if g.unit:
            ys = (torch.arange(size[0], device=device, dtype=torch.float32) + 0.5) * self.stride / g[0]
            xs = (torch.arange(size[1], device=device, dtype=torch.float32) + 0.5) * self.stride / g[1]
        else:
            (py, px), (oy, ox) = g.pitch, g.origin
            ys = oy + (torch.arange(size[0], device=device, dtype=torch.float32) + 0.5) * (self.stride * py)
            xs = ox + (torch.arange(size[1], device=device, dtype=torch.float32) + 0.5) * (self.stride * px)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([yy, xx], dim=-1).reshape(-1, 2)

    def forward_grid(
        self, canvas: Tensor, logsnr: Tensor, cond: Tensor | None = None, grid: tuple[int, int] | None = None
    ) -> Tensor:
        """``(B, C_in + 1, H, W)`` -> ``(B, C_out, H, W)``."""
        b, _, h, w = canvas.shape
        grid = as_grid((h, w)) if grid is None else as_grid(grid)
        emb = self.embed(logsnr, cond)
        ph, pw = (-h) % self.stride, (-w) % self.stride
        x = F.pad(canvas, (0, pw, 0, ph))
        if self.dwt is not None:
            with torch.autocast(x.device.type, enabled=False):  # the transform stays exact (fp32)
                x = self.dwt(x.float())
        x = self.in_conv(x.contiguous(memory_format=torch.channels_last))
        skips = []
        for blocks, down in zip(self.down_blocks, self.down_samples, strict=True):
            for blk in blocks:
                x = blk(x, emb)
                skips.append(x)
            x = down(x)
        th, tw = x.shape[-2:]
        tokens = x.flatten(2).transpose(1, 2)
        centres = self.token_coords((th, tw), grid, x.device)
        rope = None
        if self.position == "fourier":
            tokens = tokens + self.pos_proj(self.pos(centres)).to(tokens.dtype)
        else:
            rope = self.rope(centres)
        for blk in self.transformer:
            tokens = blk(tokens, emb, rope)
        x = self.mid_norm(tokens).transpose(1, 2).reshape(b, -1, th, tw)
        x = x.contiguous(memory_format=torch.channels_last)
        for up, blocks in zip(self.up_samples, self.up_blocks, strict=True):
            x = up(x, tuple(skips[-1].shape[-2:]))
            for blk in blocks:
                x = blk(torch.cat([x, skips.pop().to(x.dtype)], dim=1), emb)
        x = head(self.out_norm, self.out, x, F.silu)
        if self.dwt is not None:
            with torch.autocast(x.device.type, enabled=False):
                x = self.dwt.inverse(x.float())
        return x[..., :h, :w].contiguous()
