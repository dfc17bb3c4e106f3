"""Generic layers shared by the denoisers: zero-initialisation, FiLM and point-wise blocks.

* :func:`zero_module`: zero every parameter of a module (zero-initialised output layers).
* :class:`FiLM`: per-sample feature-wise affine modulation ``h·(1 + s) + b`` from the
  logSNR/class embedding (Perez et al. 2018; ADM's scale-shift norm), zero-initialised.
* :class:`ModulatedLayerNorm` and :class:`PointMLP`: the point-wise layers of the sparse
  neural operator (∞-Diff, section 4.3 and appendix A), which act on ``(B, N, C)`` point
  features independently per point (so they are permutation-equivariant and cost ``O(N)``),
  conditioned on a per-example embedding ``(B, E)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import in_param_dtype

__all__ = ["FiLM", "ModulatedLayerNorm", "PointMLP", "zero_module"]


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (zero-initialised output layers) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class FiLM(nn.Module):
    """``h · (1 + s) + b`` with ``(s, b) = Linear(SiLU(emb))`` per sample, zero-initialised.

    Works on channels-first grids ``(B, C, H, W)`` (``channel_dim=1``) or on point/token
    features ``(B, ..., C)`` (``channel_dim=-1``).

    Args:
        emb_dim: embedding width.
        channels: modulated width.
        channel_dim: ``1`` for ``(B, C, ...)`` tensors, ``-1`` for ``(B, ..., C)``.
    """

    def __init__(self, emb_dim: int, channels: int, channel_dim: int = -1) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.proj = zero_module(nn.Linear(emb_dim, 2 * channels))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        """Modulate ``h`` by the per-sample embedding ``emb (B, E)``."""
        scale, shift = self.proj(F.silu(emb)).to(h.dtype).chunk(2, dim=-1)
        shape = [h.shape[0]] + [1] * (h.dim() - 1)
        cd = self.channel_dim % h.dim()
        shape[cd] = h.shape[cd]
        return torch.addcmul(shift.reshape(shape), h, 1.0 + scale.reshape(shape))


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
