"""Axial rotary position embeddings (RoPE) of continuous 2-D coordinates, and a U-ViT block using them.

RoPE (Su et al. 2021, "RoFormer", eq. 13-16) rotates each pair ``(u_{2m}, u_{2m+1})`` of a
query or key by an angle proportional to its position, ``R(θ_m p)``, with
``R(φ) = [[cos φ, -sin φ], [sin φ, cos φ]]``. Since ``R(a)ᵀ R(b) = R(b - a)``, the attention
score of a query at ``p_i`` and a key at ``p_j`` is

    ⟨R(θ p_i) q, R(θ p_j) k⟩ = Σ_m (q_{2m} k_{2m} + q_{2m+1} k_{2m+1}) cos(θ_m Δ)
                                   + (q_{2m+1} k_{2m} - q_{2m} k_{2m+1}) sin(θ_m Δ),   Δ = p_j - p_i,

a function of the offset only. Axial 2-D RoPE (as in e.g. Heo et al. 2024, "Rotary position
embedding for vision transformer") gives the first half of every head's pairs the row
coordinate ``y`` and the second half the column coordinate ``x``.

Resolution independence: the positions are pixel-centre coordinates in domain units
(``[0, 1]`` across the image) and the frequencies ``θ_m = 2π f_m`` are in cycles per image
side, so a token describes the same place with the same angles at every grid; a 2x grid only
samples the same continuous phases more densely. ``f_m`` is geometric from ``min_freq``
(default 1/2 cycle per side: no offset inside the image wraps around) to ``max_freq``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .fourier import TransformerBlock

__all__ = ["AxialRoPE", "apply_rope", "RoPETransformerBlock"]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate consecutive pairs of the last axis of ``x`` by angles with ``cos``/``sin``.

    Args:
        x: ``(..., L, D)`` queries or keys (``D`` even).
        cos: ``(L, D / 2)`` cosines of the angles (broadcast over leading axes).
        sin: ``(L, D / 2)`` sines.

    Returns:
        ``(..., L, D)`` in ``x``'s dtype (the rotation is computed in fp32).
    """
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


class AxialRoPE(nn.Module):
    """Angles of axial 2-D RoPE for coordinates ``(y, x)`` in domain units.

    Args:
        head_dim: per-head query/key width; must be divisible by 4 (pairs split between the axes).
        min_freq: lowest frequency in cycles per image side.
        max_freq: highest frequency in cycles per image side (default 8: a half turn per token at
            a 16-token side, the Nyquist rate of the training token grid).
    """

    def __init__(self, head_dim: int, min_freq: float = 0.5, max_freq: float = 8.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"axial RoPE needs a head width divisible by 4, got {head_dim}")
        if not 0 < min_freq <= max_freq:
            raise ValueError(f"need 0 < min_freq <= max_freq, got {min_freq}, {max_freq}")
        n = head_dim // 4
        ratio = 0.0 if n == 1 else math.log(max_freq / min_freq) / (n - 1)
        freqs = min_freq * torch.exp(ratio * torch.arange(n, dtype=torch.float64))
        self.register_buffer("omega", (2 * math.pi * freqs).float(), persistent=False)

    def forward(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        """``coords (L, 2)`` -> ``(cos, sin)`` each ``(L, head_dim / 2)``, fp32.

        Pairs ``0 .. head_dim/4 - 1`` turn with ``y``, the rest with ``x``.
        """
        c = coords.float()
        ang = torch.cat([c[:, :1] * self.omega, c[:, 1:2] * self.omega], dim=-1)
        return torch.cos(ang), torch.sin(ang)


class RoPETransformerBlock(TransformerBlock):
    """:class:`~lightning_infdiff.denoisers.layers.fourier.TransformerBlock` with RoPE on q and k.

    The same parameters (and state-dict keys) as the parent; the queries and keys are
    LayerNorm-ed per head, then rotated by :func:`apply_rope`, then attended.
    """

    def forward(self, x: Tensor, emb: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``x (B, L, C)``, ``emb (B, E)``, ``rope`` = ``(cos, sin)`` of ``(L, C / heads / 2)``."""
        if rope is None:
            return super().forward(x, emb)
        b, length, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope)
        o = attention(q, k, v).transpose(1, 2).reshape(b, length, c)
        x = x + self.attn_out(o)
        hdn = self.film(F.silu(self.fc1(self.norm2(x))), emb)
        return x + self.fc2(self.drop(hdn))
