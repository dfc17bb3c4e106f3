"""Embeddings of the noise level (and class) that condition every denoiser.

* :func:`logsnr_embedding`: sinusoidal features of ``scale · logSNR`` (Vaswani et al. 2017, as
  used by ADM).
* :class:`NoiseEmbedding`: ``MLP(sinusoid(scale · logSNR)) + table[label]``, the per-example
  embedding ``(B, E)`` shared by every block of a denoiser.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .precision import in_param_dtype

__all__ = ["NoiseEmbedding", "logsnr_embedding"]


def logsnr_embedding(logsnr: Tensor, dim: int, max_period: float = 10_000.0, scale: float = 1.0) -> Tensor:
    """Sinusoidal embedding of the noise level (Vaswani et al. 2017, as used by ADM).

    The embedding is taken of ``scale * logsnr`` (logSNR lies roughly in [-20, 20]).

    Returns:
        ``(B, dim)`` float32 features.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=logsnr.device) / max(half, 1))
    args = scale * logsnr.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class NoiseEmbedding(nn.Module):
    """Embedding of the noise level (and optional class) shared by every block.

    ``emb = MLP(sinusoid(scale · logSNR)) + table[label]`` (ADM's time embedding, Nichol and
    Dhariwal 2021, applied to logSNR instead of a schedule-specific step). With
    ``num_classes > 0`` the table has ``num_classes + 1`` rows; row ``num_classes`` is the null
    class of classifier-free guidance and is used when ``cond`` is ``None``.

    Args:
        dim: output width ``E``.
        num_classes: number of classes, ``0`` for unconditional.
        fourier_dim: width of the sinusoidal features.
        logsnr_scale: multiplies logSNR (range about [-20, 20]) before the sinusoids.
    """

    def __init__(self, dim: int, num_classes: int = 0, fourier_dim: int | None = None, logsnr_scale: float = 1.0) -> None:
        super().__init__()
        self.fourier_dim = fourier_dim or dim
        self.logsnr_scale = logsnr_scale
        self.num_classes = num_classes
        self.mlp = nn.Sequential(nn.Linear(self.fourier_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes > 0 else None

    def forward(self, logsnr: Tensor, cond: Tensor | None = None) -> Tensor:
        """``(B,)`` logSNR (+ ``(B,)`` int labels or ``None``) -> ``(B, E)``."""
        emb = in_param_dtype(self.mlp, logsnr_embedding(logsnr, self.fourier_dim, scale=self.logsnr_scale))
        if self.label is not None:
            if cond is None:
                cond = torch.full_like(logsnr, self.num_classes, dtype=torch.long)
            emb = emb + self.label(cond.long())
        elif cond is not None:
            raise ValueError("a condition was given but the denoiser was built with num_classes=0")
        return emb
