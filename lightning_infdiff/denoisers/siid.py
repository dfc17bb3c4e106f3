"""SIID-style scale-invariant axial transformer on pixels (after Yegor-men's SIID write-up).

``siid_scale-invariant-image-diffuser_post.txt`` describes: two coordinate systems per pixel,
Fourier/RoPE features with *increasing* frequencies, axial attention with a learnable Gaussian
locality mask measured in image fractions, FiLM (AdaLN) conditioning everywhere, residual
connections, and no convolutions. The post first folds ``r x r`` pixel blocks into channels (pixel
unshuffle, "optional but recommended", "explicitly for speed": its MNIST model attends over 8x8
tokens of a 64x64 image). ``patch`` is that factor: ``patch=1`` runs on pixels, one token each;
``patch=r`` makes a step about ``r^2`` times cheaper, at the price of tokens that hold ``r x r``
*pixels*: a patch fixed in pixels, which covers a smaller piece of the image on a finer grid (the
denoiser study, ``benchmarks/results/study_denoisers/``, measures what that costs at 2x and 4x).

Coordinates, for a pixel centre ``(y, x)`` in domain units (:mod:`lightning_infdiff.coords`) on a
window with origin ``o`` and extent ``E``:

* composition ("relative"): ``(y - ½, x - ½)``, the subject's frame in domain units, the same at
  every resolution and aspect ratio; on a ``wide`` canvas it extends beyond ``[-½, ½]`` along the
  longer side (SIID inscribes the image in a unit square instead, which shrinks the subject on
  wider canvases; here the toolkit's one geometry decides, so a wider canvas is a wider view);
* image ("absolute"): ``((y, x) - o) / E - ½``; spans ``[-½, ½]`` on both axes and marks the edges.

On the unit square (every square grid) the two coincide, as in SIID's training on squares.

Both go through Fourier features ``sin/cos(2π f_k c)``, ``f_k = min_freq · 2^k`` cycles per unit.

Coordinate jitter (SIID: "improved quality and generalisation markedly"): the interface hands
the model pixel centres, so in training mode the model itself adds ``U(-½, ½)`` pixel of jitter
per pixel to both systems before the Fourier features. In eval mode there is no jitter, so the
model is deterministic at sampling time. Jitter is the only randomness (besides dropout) that
depends on ``self.training``.

Points: the ``N`` points are placed on their grid; attention keys are restricted to present
points (absent pixels are never read), so the model is permutation-equivariant and accepts any
subset (with ``patch=r``, a token is a key when any of its pixels is present, and the presence of
each of its pixels is an input). The point-wise layers run on the whole canvas (simpler than
compacting rows), so the cost is that of the full grid, ``O(T(H' + W')C)`` for ``T = H'W'`` tokens
with ``H' = H/r``, whatever ``N`` is.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..coords import _axis, as_grid, coords_to_index
from .base import Denoiser
from .layers.common import ModulatedLayerNorm, PointMLP, head, output_head, zero_module
from .layers.embeddings import NoiseEmbedding
from .layers.fourier import AxialAttention, FourierFeatures

__all__ = ["SIIDDenoiser", "siid_coordinates"]


def siid_coordinates(coords: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Composition (domain) and image (edge-spanning) coordinates of ``grid``, both ``(..., 2)``."""
    g = as_grid(grid)
    comp = coords - 0.5
    if g.unit:
        return comp, comp
    lo = torch.tensor(g.origin, device=coords.device, dtype=coords.dtype)
    size = torch.tensor(g.extent, device=coords.device, dtype=coords.dtype)
    return comp, (coords - lo) / size - 0.5


class _Block(nn.Module):
    def __init__(self, channels: int, emb_dim: int, heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = ModulatedLayerNorm(channels, emb_dim)
        self.attn = AxialAttention(channels, heads, gaussian_bias=True)
        zero_module(self.attn.out)
        self.norm2 = ModulatedLayerNorm(channels, emb_dim)
        self.mlp = PointMLP(channels, mlp_ratio)
        self.drop = nn.Dropout(dropout)
        zero_module(self.mlp.fc2)

    def forward(self, x: Tensor, emb: Tensor, ys: Tensor, xs: Tensor, mask: Tensor | None) -> Tensor:
        b, h, w, c = x.shape
        a = self.norm1(x.reshape(b, h * w, c), emb).reshape(b, h, w, c)
        x = x + self.attn(a, ys, xs, mask)
        m = self.mlp(self.norm2(x.reshape(b, h * w, c), emb))
        return x + self.drop(m).reshape(b, h, w, c)


class SIIDDenoiser(Denoiser):
    """Scale-invariant axial transformer: dual Fourier coordinates, axial attention, FiLM.

    Args:
        in_channels: channels of the noisy field.
        out_channels: prediction channels (defaults to ``in_channels``).
        num_classes: classes for conditioning (``0``: none; label ``num_classes`` = null).
        channels: token width.
        depth: transformer blocks.
        heads: attention heads (each learns its own Gaussian locality width).
        mlp_ratio: hidden width of the block MLPs.
        num_freqs: Fourier octaves per coordinate system.
        min_freq: lowest frequency in cycles per unit (SIID: π/8 rad = 1/16 cycle over the side).
        patch: pixel-unshuffle factor ``r`` (``1``: one token per pixel); a grid whose sides do
            not divide by ``r`` is padded with absent pixels.
        jitter: add ``U(-½, ½)``-pixel coordinate jitter in training mode.
        dropout: dropout after the block MLPs.
        emb_dim: width of the logSNR/class embedding.
        zero_init_output: zero-initialise the output layer.
    """

    #: the point-wise layers run on the whole canvas (module docstring)
    full_canvas_cost: ClassVar[bool] = True

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        num_classes: int = 0,
        channels: int = 128,
        depth: int = 6,
        heads: int = 4,
        mlp_ratio: int = 2,
        num_freqs: int = 8,
        min_freq: float = 1 / 16,
        jitter: bool = True,
        dropout: float = 0.0,
        emb_dim: int = 128,
        zero_init_output: bool = True,
        patch: int = 1,
    ) -> None:
        super().__init__(in_channels, out_channels, num_classes)
        if patch < 1:
            raise ValueError(f"SIIDDenoiser patch must be a positive integer, got {patch}")
        self.patch = patch
        self.jitter = jitter
        self.fourier = FourierFeatures(2, num_freqs, min_freq)
        self.embed = NoiseEmbedding(emb_dim, num_classes)
        self.inp = nn.Linear((in_channels + 1) * patch**2 + 2 * self.fourier.out_dim, channels)
        self.blocks = nn.ModuleList(_Block(channels, emb_dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.out_norm, self.out = output_head(nn.LayerNorm(channels), nn.Linear(channels, self.out_channels * patch**2),
                                              zero_init_output)

    def forward(
        self, values: Tensor, coords: Tensor, logsnr: Tensor, grid: tuple[int, int], cond: Tensor | None = None
    ) -> Tensor:
        """``(B, N, C_in)`` at pixel-centre ``coords`` -> ``(B, N, C_out)`` (see :mod:`.base`)."""
        h, w = self.check_inputs(values, coords, logsnr, grid)
        grid, r = as_grid(grid), self.patch
        b, n, c = values.shape
        idx = coords_to_index(coords, grid)
        canvas = values.new_zeros(b, h * w, c).scatter(1, idx[..., None].expand(b, n, c), values)
        present = torch.zeros(b, h * w, dtype=values.dtype, device=values.device).scatter(1, idx, 1.0)
        # r x r pixels per token; a grid whose sides do not divide by r is padded with absent pixels
        th, tw = -(-h // r), -(-w // r)
        pix = torch.cat([canvas, present[..., None]], dim=-1).transpose(1, 2).reshape(b, c + 1, h, w)
        pix = F.pad(pix, (0, tw * r - w, 0, th * r - h))
        pix = F.pixel_unshuffle(pix, r).view(b, c + 1, r * r, th * tw)  # (B, C+1, r^2, T)
        (py, px), (oy, ox) = grid.pitch, grid.origin
        ys, xs = _axis(th, r * py, oy, values.device, torch.float32), _axis(tw, r * px, ox, values.device, torch.float32)
        centres = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).view(th * tw, 2)
        pos = centres.expand(b, th * tw, 2)
        if self.training and self.jitter:
            pos = pos + (torch.rand_like(pos) - 0.5) * torch.tensor((r * py, r * px), device=pos.device)
        comp, image = siid_coordinates(pos, grid)
        feats = torch.cat([pix.flatten(1, 2).transpose(1, 2),
                           self.fourier(comp).to(values.dtype), self.fourier(image).to(values.dtype)], dim=-1)
        x = self.inp(feats).view(b, th, tw, -1)
        axis = siid_coordinates(centres, grid)[0].view(th, tw, 2)
        ys, xs = axis[:, 0, 0], axis[0, :, 1]
        emb = self.embed(logsnr, cond)
        full = n == th * tw * r * r
        mask = None if full else pix[:, c].amax(dim=1).view(b, th, tw) > 0
        for blk in self.blocks:
            x = blk(x, emb, ys, xs, mask)
        out = head(self.out_norm, self.out, x.reshape(b, th * tw, -1), fp32=True)  # to the data's channels in fp32
        out = F.pixel_shuffle(out.transpose(1, 2).reshape(b, -1, th, tw), r)[..., :h, :w]
        out = out.flatten(2).transpose(1, 2)
        return torch.gather(out, 1, idx[..., None].expand(b, n, out.shape[-1]))
