"""Point-wise layers shared by the sparse neural operator (∞-Diff, section 4.3 and appendix A).

Everything here acts on ``(B, N, C)`` point features independently per point (so it is
permutation-equivariant and costs ``O(N)``), conditioned on a per-example embedding ``(B, E)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import in_param_dtype, logsnr_embedding

__all__ = ["NoiseEmbedding", "ModulatedLayerNorm", "PointMLP"]


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


class ModulatedLayerNorm(nn.Module):
    """LayerNorm over channels, then FiLM from the embedding: ``LN(x)·(1 + s) + b``.

    "Modulated layer normalisation" of ∞-Diff appendix A (Ba et al. 2016; ADM's scale-shift
    norm). ``(s, b) = Linear(SiLU(emb))``, zero-initialised so every block starts as plain LN.

    Args:
        channels: feature width ``C``.
        emb_dim: embedding width ``E``.
    """

    def __init__(self, channels: int, emb_dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.film = nn.Linear(emb_dim, 2 * channels)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x (B, N, C)``, ``emb (B, E)`` -> ``(B, N, C)``."""
        scale, shift = in_param_dtype(self.film, F.silu(emb)).unsqueeze(1).chunk(2, dim=-1)
        # in x's dtype even under autocast (CUDA autocast would return fp32; CPU autocast in
        # torch 2.13-2.14 already keeps a bf16 input's dtype): the statistics are fp32
        # inside the kernel either way, and the sparse level then stays bf16 end to end (its
        # conv runs on a bf16 canvas, no fp32 activations to cast back); on its own the LN
        # costs about the same either way (benchmarks/results/kernels.md)
        with torch.autocast(x.device.type, enabled=False):
            h = F.layer_norm(x, (self.channels,))
            return torch.addcmul(shift.to(h.dtype), h, (1.0 + scale.float()).to(h.dtype))


class PointMLP(nn.Module):
    """Point-wise MLP ``C -> ratio·C -> C`` with GELU (ConvNeXt-style, ∞-Diff appendix A).

    Args:
        channels: input/output width.
        ratio: hidden-width multiplier (∞-Diff: 2).
        out_channels: output width (defaults to ``channels``).
    """

    def __init__(self, channels: int, ratio: int = 2, out_channels: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, ratio * channels)
        self.fc2 = nn.Linear(ratio * channels, out_channels or channels)

    def forward(self, x: Tensor) -> Tensor:
        """``(..., C)`` -> ``(..., C_out)``."""
        return self.fc2(F.gelu(self.fc1(x)))
