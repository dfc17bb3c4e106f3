"""ADM-style U-Net blocks (Nichol and Dhariwal 2021; Dhariwal and Nichol 2021).

Used by :class:`~lightning_infdiff.denoisers.unet.ADMUNet`, the grid network of ∞-Diff
(appendix A: "the architecture used by Nichol and Dhariwal (2021)"). Residual blocks with
GroupNorm and scale-shift conditioning, multi-head self-attention, and 2x resampling. All
blocks accept channels_last tensors and keep that layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import attention
from .common import film, film_scale_shift, zero_module

__all__ = ["group_norm", "LayoutGroupNorm", "ResBlock", "AttentionBlock", "Downsample", "Upsample"]


class LayoutGroupNorm(nn.GroupNorm):
    """GroupNorm that normalises channels_last inputs through a contiguous copy where that pays.

    The same maths and parameters as :class:`torch.nn.GroupNorm`. On CPU torch's channels_last
    GroupNorm is several times slower than a contiguous copy with gradients and on small maps,
    but faster without gradients on maps of 32² and more (a grid denoiser sampling at 128²)
    (``git show 7df682e:benchmarks/results/kernels.md``). :meth:`relayout_pays` picks the faster way. The output keeps the input's memory format.
    """

    #: Smallest feature map (H·W) that runs torch's channels_last kernel when no gradient is recorded.
    NO_GRAD_MIN_PIXELS = 32 * 32

    @classmethod
    def relayout_pays(cls, x: Tensor) -> bool:
        """Whether a channels_last (not contiguous) ``x`` is normalised via a contiguous copy:
        always when gradients are recorded, else on maps smaller than ``NO_GRAD_MIN_PIXELS``."""
        return torch.is_grad_enabled() or x.shape[-2] * x.shape[-1] < cls.NO_GRAD_MIN_PIXELS

    def forward(self, x: Tensor) -> Tensor:
        if (x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
                and self.relayout_pays(x)):
            if not torch.is_grad_enabled():  # no gradients to keep in layout: skip the autograd Function
                out = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
                return out.contiguous(memory_format=torch.channels_last)
            out = F.group_norm(_Relayout.apply(x, False), self.num_groups, self.weight, self.bias, self.eps)
            return _Relayout.apply(out, True)
        return super().forward(x)


class _Relayout(torch.autograd.Function):
    """Copy a 4-D tensor to channels_last (``to_cl``) or contiguous, and its gradient back.

    ``Tensor.contiguous`` passes the gradient through in whatever layout it arrives, so the
    gradient of a channels_last input of :class:`LayoutGroupNorm` came back contiguous. Where that
    input also feeds a convolution (every ResBlock input, the U-Net skips), autograd then adds
    a contiguous and a channels_last gradient; on CPU in bf16 that mixed-layout ``add_`` is much
    slower than a same-layout one (``git show 7df682e:benchmarks/results/kernels.md``). Converting the
    gradient here keeps every gradient in the layout of its tensor.
    """

    @staticmethod
    def forward(ctx, x: Tensor, to_cl: bool) -> Tensor:  # noqa: ANN001 - autograd context
        ctx.to_cl = to_cl
        return x.contiguous(memory_format=torch.channels_last if to_cl else torch.contiguous_format)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001 - autograd context
        return grad.contiguous(memory_format=torch.contiguous_format if ctx.to_cl else torch.channels_last), None


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count ``<= max_groups`` that divides ``channels``."""
    groups = math.gcd(channels, max_groups)
    return LayoutGroupNorm(groups, channels)


class ResBlock(nn.Module):
    """``x + conv(drop(SiLU(GN(conv(SiLU(GN(x))))·(1 + s) + b)))`` with ``(s, b)`` from ``emb``.

    Args:
        in_channels: input width.
        out_channels: output width (a 1x1 conv maps the skip when it differs).
        emb_dim: embedding width.
        dropout: dropout probability (ADM/simple diffusion use it only at low resolutions).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = group_norm(out_channels)
        self.drop = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x (B, C_in, H, W)``, ``emb (B, E)`` -> ``(B, C_out, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = film_scale_shift(self.emb, emb)
        h = self.conv2(self.drop(F.silu(self.modulate(self.norm2(h), scale[:, :, None, None], shift[:, :, None, None]))))
        return self.skip(x) + h

    @staticmethod
    def modulate(h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """FiLM ``h·(1 + s) + b`` with the conditioning path's fp32 ``(s, b)`` (``(B, C, 1, 1)``),
        so under autocast a bf16 ``h`` gives an fp32 result (keeping it bf16 gained nothing in the
        ``bf16_film`` probe, ``git show 7df682e:benchmarks/bench_bf16_probes.py``)."""
        return film(h, scale, shift, channel_dim=1, promote=True)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions of a feature map, residual.

    Args:
        channels: feature width.
        head_channels: channels per head (ADM: 64); heads = ``channels // head_channels``.
    """

    def __init__(self, channels: int, head_channels: int = 64) -> None:
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads")
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = (t.transpose(-1, -2) for t in qkv.unbind(1))  # (B, heads, HW, d)
        out = attention(q, k, v)
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Strided 3x3 convolution halving the resolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H/2, W/2)``."""
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, 2H, 2W)``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
