"""Coordinate features, axial and transformer attention blocks, and a masked blur, shared by
the FNO, U-ViT, coordinate-MLP and SIID denoisers (FiLM and ``zero_module`` are in
:mod:`~lightning_infdiff.denoisers.layers.common`).

* :class:`FourierFeatures`: ``[sin(2π f·c), cos(2π f·c)]`` of continuous coordinates with
  fixed, geometrically increasing frequencies (Tancik et al. 2020; SIID's "increasing
  frequencies" positional system). Because the input is a coordinate in domain units, not a
  pixel index, the same features describe the same place at every grid.
* :class:`AxialAttention`: multi-head self-attention along rows, then along columns (Ho et al.
  2019), with an optional key mask (absent points) and a learnable Gaussian distance bias in
  domain units (SIID's "gaussian mask" that makes attention local at any pixel density).
* :class:`TransformerBlock`: pre-norm attention + FiLM-ed MLP block of the U-ViT (simple
  diffusion, appendix B.2.1), with normalised queries/keys and zero-initialised outputs.
* :func:`gaussian_blur_masked`: normalised (Nadaraya-Watson) Gaussian blur of a masked canvas.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .common import FiLM, zero_module

__all__ = ["FourierFeatures", "AxialAttention", "TransformerBlock", "gaussian_blur_masked"]


class FourierFeatures(nn.Module):
    """Fixed Fourier features of ``D``-dimensional coordinates.

    ``γ(c) = [c, sin(2π f_k c_d), cos(2π f_k c_d)]`` for ``f_k = min_freq · 2^k``, ``k < num_freqs``
    (Tancik et al. 2020, "Fourier features let networks learn high frequency functions").
    Frequencies are in cycles per unit of the coordinate, so with coordinates in domain units
    the features are resolution-independent.

    Args:
        in_dim: coordinate dimension ``D``.
        num_freqs: number of octaves.
        min_freq: lowest frequency in cycles per unit (SIID: 1/16 .. 1 on a unit-wide domain).
        include_input: also return the raw coordinates.
    """

    def __init__(self, in_dim: int = 2, num_freqs: int = 6, min_freq: float = 0.5, include_input: bool = True) -> None:
        super().__init__()
        self.in_dim, self.include_input = in_dim, include_input
        self.register_buffer("freqs", min_freq * 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)

    @property
    def out_dim(self) -> int:
        """Width of the features."""
        return self.in_dim * (2 * self.freqs.numel() + int(self.include_input))

    def forward(self, coords: Tensor) -> Tensor:
        """``(..., D)`` -> ``(..., out_dim)`` float32 features (computed in fp32)."""
        c = coords.float()
        args = 2.0 * math.pi * c[..., :, None] * self.freqs  # (..., D, F)
        feats = [torch.sin(args).flatten(-2), torch.cos(args).flatten(-2)]
        if self.include_input:
            feats.insert(0, c)
        return torch.cat(feats, dim=-1)


class AxialAttention(nn.Module):
    """Row-then-column multi-head self-attention on ``(B, H, W, C)`` features (Ho et al. 2019).

    Cost ``O(HW(H + W)C)`` instead of ``O((HW)^2 C)``. Optional parts:

    * ``mask (B, H, W)``: only present pixels are keys (a query may always see itself, so
      rows without any present pixel stay finite); this makes the layer act on a point subset.
    * ``gaussian_bias``: adds ``-d^2 / (2 σ_h^2)`` to the logits, ``d`` the distance along the
      axis in domain units and ``σ_h`` a learnable width per head (SIID's Gaussian mask:
      locality defined in image fractions, hence the same at any pixel density).

    Args:
        channels: feature width.
        heads: attention heads.
        gaussian_bias: use the learnable distance bias.
        init_sigma: initial width of the bias in domain units (SIID: 1/6, 3σ = half the image).
    """

    def __init__(self, channels: int, heads: int = 4, gaussian_bias: bool = True, init_sigma: float = 1 / 6) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.qkv = nn.ModuleList([nn.Linear(channels, 3 * channels) for _ in range(2)])
        self.out = nn.ModuleList([nn.Linear(channels, channels) for _ in range(2)])
        self.log_sigma = nn.Parameter(torch.full((2, heads), math.log(init_sigma))) if gaussian_bias else None

    def _attend(self, x: Tensor, pos: Tensor, keep: Tensor | None, axis: int) -> Tensor:
        # x: (S, L, C) sequences along one axis; pos: (L,) positions in domain units.
        s, length, c = x.shape
        q, k, v = self.qkv[axis](x).view(s, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = None
        if self.log_sigma is not None:
            d2 = (pos[:, None] - pos[None, :]).float().pow(2)
            bias = -d2 / (2.0 * torch.exp(2.0 * self.log_sigma[axis]).view(-1, 1, 1))  # (heads, L, L)
            bias = bias.unsqueeze(0)
        if keep is not None:
            allowed = keep[:, None, None, :] | torch.eye(length, dtype=torch.bool, device=x.device)
            neg = torch.zeros(allowed.shape, dtype=torch.float32, device=x.device).masked_fill(~allowed, float("-inf"))
            bias = neg if bias is None else bias + neg
        if bias is not None:
            bias = bias.to(q.dtype)
        o = attention(q, k, v, bias)
        return self.out[axis](o.transpose(1, 2).reshape(s, length, c))

    def forward(self, x: Tensor, ys: Tensor, xs: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend along rows then columns (residual between the two), return the total update.

        Args:
            x: ``(B, H, W, C)`` features.
            ys: ``(H,)`` row positions in domain units (for the distance bias).
            xs: ``(W,)`` column positions in domain units.
            mask: optional ``(B, H, W)`` bool, ``True`` where a point is present.
        """
        b, h, w, c = x.shape
        keep = None if mask is None else mask.reshape(b * h, w)
        upd = self._attend(x.reshape(b * h, w, c), xs, keep, 0).view(b, h, w, c)
        x2 = (x + upd).transpose(1, 2)  # (B, W, H, C)
        keep = None if mask is None else mask.transpose(1, 2).reshape(b * w, h)
        upd2 = self._attend(x2.reshape(b * w, h, c), ys, keep, 1).view(b, w, h, c).transpose(1, 2)
        return upd + upd2


class TransformerBlock(nn.Module):
    """U-ViT transformer block (simple diffusion, appendix B.2.1), pre-norm, residual.

    ``x += Attn(LN(x))`` with LayerNorm on queries and keys (``NormalizeWithBias``), then
    ``x += W_2 drop(FiLM(SiLU(W_1 LN(x)), emb))``; both output projections zero-initialised.

    Args:
        channels: token width.
        emb_dim: conditioning embedding width.
        heads: attention heads.
        mlp_ratio: hidden width of the MLP in units of ``channels``.
        dropout: dropout on the MLP hidden layer (simple diffusion: only at <= 16²).
    """

    def __init__(self, channels: int, emb_dim: int, heads: int = 4, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm1 = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.q_norm = nn.LayerNorm(channels // heads)
        self.k_norm = nn.LayerNorm(channels // heads)
        self.attn_out = zero_module(nn.Linear(channels, channels))
        self.norm2 = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, mlp_ratio * channels)
        self.film = FiLM(emb_dim, mlp_ratio * channels)
        self.drop = nn.Dropout(dropout)
        self.fc2 = zero_module(nn.Linear(mlp_ratio * channels, channels))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x (B, L, C)``, ``emb (B, E)`` -> ``(B, L, C)``."""
        b, length, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        o = attention(q, k, v).transpose(1, 2).reshape(b, length, c)
        x = x + self.attn_out(o)
        hdn = self.film(F.silu(self.fc1(self.norm2(x))), emb)
        return x + self.fc2(self.drop(hdn))


def _gauss_kernel(sigma_px: float, device: torch.device) -> Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    t = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    return k / k.sum()


def gaussian_blur_masked(
    canvas: Tensor, mask: Tensor, sigmas: tuple[float, ...], density: tuple[int, int] | None = None
) -> Tensor:
    """Normalised Gaussian blurs of the sampled points at several widths (in domain units).

    ``blur_σ(v)(c) = Σ_j K_σ(c - c_j) v_j / Σ_j K_σ(c - c_j)``: a Nadaraya-Watson estimate over
    the present points only (zero padding outside the image, the normalisation handles the
    border and missing points exactly as ∞-Diff's neighbour-count normalisation does). The
    width ``σ`` is a fraction of the image side, converted to pixels per axis, so the same
    physical blur applies at any grid. Separable, truncated at 3σ, computed in fp32.

    Args:
        canvas: ``(B, C, H, W)`` values, zero where no point is present.
        mask: ``(B, 1, H, W)`` 1 at present points.
        sigmas: blur widths in domain units (fractions of the training image's side).
        density: pixels per domain unit along each axis (default ``(H, W)``: the unit square).

    Returns:
        ``(B, len(sigmas) * C, H, W)`` blurred values (scale-major).
    """
    b, c, h, w = canvas.shape
    dy, dx = density if density is not None else (h, w)
    with torch.autocast(device_type=canvas.device.type, enabled=False):
        x = torch.cat([canvas.float() * mask.float(), mask.float()], dim=1).reshape(b * (c + 1), 1, h, w)
        outs = []
        for s in sigmas:
            ky = _gauss_kernel(max(s * dy, 0.3), canvas.device)
            kx = _gauss_kernel(max(s * dx, 0.3), canvas.device)
            # Kernels wider than the image are cut to it (truncation is exact under normalisation).
            ky = ky[max(0, (ky.numel() - (2 * h - 1)) // 2): ky.numel() - max(0, (ky.numel() - (2 * h - 1)) // 2)]
            kx = kx[max(0, (kx.numel() - (2 * w - 1)) // 2): kx.numel() - max(0, (kx.numel() - (2 * w - 1)) // 2)]
            y = F.conv2d(x, ky.view(1, 1, -1, 1), padding=(ky.numel() // 2, 0))
            y = F.conv2d(y, kx.view(1, 1, 1, -1), padding=(0, kx.numel() // 2)).reshape(b, c + 1, h, w)
            outs.append(y[:, :c] / y[:, c:].clamp_min(1e-6))
    return torch.cat(outs, dim=1)
