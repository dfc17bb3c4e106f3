"""Generic layers shared by the denoisers: zero-initialisation, FiLM, the output head, point-wise blocks.

* :func:`zero_module`: zero every parameter of a module (zero-initialised output layers).
* FiLM, the per-sample feature-wise affine modulation ``h·(1 + s) + b`` from the logSNR/class
  embedding (Perez et al. 2018; ADM's scale-shift norm): :func:`film_scale_shift` and
  :func:`film` are the one implementation; :class:`FiLM` owns a projection and applies them,
  and the blocks whose checkpoints store the projection under another name (ADM's
  ``ResBlock.emb``, :class:`ModulatedLayerNorm`'s ``film``) call them on their own layer.
* :func:`output_head` and :func:`head`: every model's last layers ``W φ(N(x))``, kept as the
  model's own ``out_norm``/``out`` attributes so the checkpoint keys stay what they were.
* :class:`ModulatedLayerNorm` and :class:`PointMLP`: the point-wise layers of the sparse
  neural operator (∞-Diff, section 4.3 and appendix A), which act on ``(B, N, C)`` point
  features independently per point (so they are permutation-equivariant and cost ``O(N)``),
  conditioned on a per-example embedding ``(B, E)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .precision import in_param_dtype

__all__ = [
    "FiLM", "ModulatedLayerNorm", "PointMLP", "film", "film_scale_shift", "head", "output_head", "zero_module",
]


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` (zero-initialised output layers) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def film_scale_shift(proj: nn.Linear, emb: Tensor) -> tuple[Tensor, Tensor]:
    """``(s, b) = W SiLU(e) + c``, each ``(B, C)``, in ``proj``'s parameter dtype (fp32 under
    autocast, see :func:`~.precision.in_param_dtype`)."""
    return in_param_dtype(proj, F.silu(emb)).chunk(2, dim=-1)


def film(h: Tensor, scale: Tensor, shift: Tensor, channel_dim: int = -1, promote: bool = False) -> Tensor:
    """``h·(1 + s) + b`` with per-sample ``s, b`` of ``(B, C)`` broadcast along ``channel_dim`` of ``h``.

    The result is in ``h``'s dtype (``1 + s`` formed before the cast), or with ``promote`` in the
    promoted dtype of ``h`` and ``(s, b)`` (a bf16 ``h`` with fp32 ``(s, b)`` gives fp32).
    """
    shape = [h.shape[0]] + [1] * (h.dim() - 1)
    cd = channel_dim % h.dim()
    shape[cd] = h.shape[cd]
    scale, shift = 1.0 + scale.reshape(shape), shift.reshape(shape)
    if promote:
        return h * scale + shift  # unfused, as ADM's blocks have always rounded it
    return torch.addcmul(shift.to(h.dtype), h, scale.to(h.dtype))


class FiLM(nn.Module):
    """``h·(1 + s) + b`` with ``(s, b) = W SiLU(e) + c`` per sample (:func:`film`), zero-initialised.

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
        return film(h, *film_scale_shift(self.proj, emb), self.channel_dim)


def output_head(norm: nn.Module, proj: nn.Module, zero_init: bool = True) -> tuple[nn.Module, nn.Module]:
    """The layers ``(N, W)`` of an output head ``W φ(N(x))``, ``W`` zero-initialised on request.

    A model assigns them to its own attributes (``self.out_norm, self.out = output_head(...)``),
    which keeps its checkpoint keys, and runs them with :func:`head`.
    """
    return norm, zero_module(proj) if zero_init else proj


def head(
    norm: nn.Module, proj: nn.Module, x: Tensor, act: Callable[[Tensor], Tensor] = F.gelu, fp32: bool = False
) -> Tensor:
    """``W φ(N(x))``; with ``fp32`` the projection ``W`` runs in its parameters' dtype whatever
    autocast says (a point model's projection to the data's few channels,
    :func:`~.precision.in_param_dtype`)."""
    h = act(norm(x))
    return in_param_dtype(proj, h) if fp32 else proj(h)


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
        self.film = zero_module(nn.Linear(emb_dim, 2 * channels))

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x (B, N, C)``, ``emb (B, E)`` -> ``(B, N, C)``."""
        scale, shift = film_scale_shift(self.film, emb)
        # in x's dtype even under autocast (CUDA autocast would return fp32; CPU autocast in
        # torch 2.13-2.14 already keeps a bf16 input's dtype): the statistics are fp32
        # inside the kernel either way, and the sparse level then stays bf16 end to end (its
        # conv runs on a bf16 canvas, no fp32 activations to cast back); on its own the LN
        # costs about the same either way (git show 7df682e:benchmarks/results/kernels.md)
        with torch.autocast(x.device.type, enabled=False):
            return film(F.layer_norm(x, (self.channels,)), scale, shift)


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
