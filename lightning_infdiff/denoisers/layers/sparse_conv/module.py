"""The normalised sparse depthwise convolution of point features and its module (eq. 16)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .kernel import integer_scales, resize_kernel, tent_factored_conv2d
from .kernel_map import pairs_depthwise_conv
from .lattice import PointLattice
from .op import _depthwise_same_conv, depthwise_same_conv

__all__ = ["BF16_MAX_KERNEL", "SparseDepthwiseConv2d", "sparse_depthwise_conv"]

#: Largest kernel side run in bf16 by the dense backend (larger, resized kernels stay fp32).
BF16_MAX_KERNEL = 9


def _conv_dense(x: Tensor, conv: Callable[[Tensor], Tensor], lat: PointLattice, bf16: bool = False) -> Tensor:
    """Points -> channels-last canvas -> ``conv`` (a "same" depthwise conv) -> points.

    The canvas is fp32 (autocast off), or bf16 when ``bf16`` and ``x`` is bf16 (``conv`` must
    then accept a bf16 canvas, as :func:`_same_conv`'s does).
    """
    b, n, c = x.shape
    h, w = lat.grid
    dt = x.dtype if bf16 and x.dtype == torch.bfloat16 else torch.promote_types(x.dtype, torch.float32)
    if lat.full_grid:  # (B, H·W, C) row-major points are already the channels-last canvas
        with torch.autocast(x.device.type, enabled=False):
            out = conv(x.to(dt).reshape(b, h, w, c).permute(0, 3, 1, 2))
            return out.permute(0, 2, 3, 1).reshape(b, n, c).to(x.dtype)
    # Rows of the (B·H·W, C) canvas: moving whole C-vectors with index_copy / index_select
    # (backward: index_select / index_add_) is several times faster on CPU than scatter /
    # gather with an index expanded over C, which walk the index element by element.
    flat = (lat.indices + torch.arange(b, device=x.device).view(b, 1) * (h * w)).reshape(-1)
    # autocast off: the canvas dtype is chosen above. Large (resized) kernels stay fp32:
    # oneDNN's bf16 channels-last depthwise conv once hung at 15x15 on CPU (torch 2.13).
    with torch.autocast(x.device.type, enabled=False):
        # (B·H·W, C) is the channels-last layout of (B, C, H, W): no copies around the conv.
        canvas = torch.zeros(b * h * w, c, dtype=dt, device=x.device).index_copy(0, flat, x.reshape(b * n, c).to(dt))
        out = conv(canvas.view(b, h, w, c).permute(0, 3, 1, 2))
        out = out.permute(0, 2, 3, 1).reshape(b * h * w, c)
        return out.index_select(0, flat).view(b, n, c).to(x.dtype)


def _same_conv(weight: Tensor) -> Callable[[Tensor], Tensor]:
    """Zero-padded "same" depthwise conv with an already resized ``(C, 1, kh, kw)`` kernel
    (through :data:`depthwise_same_conv` when gradients are recorded)."""
    kh, kw = weight.shape[-2:]

    def conv(canvas: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return depthwise_same_conv(canvas, weight, kh // 2, kw // 2)
        return _depthwise_same_conv(canvas, weight, kh // 2, kw // 2)

    return conv


def _conv_torchsparse(x: Tensor, weight: Tensor, lat: PointLattice) -> Tensor:  # pragma: no cover
    """Depthwise conv through the ∞-Diff fork of torchsparse (CUDA only; untested on CPU).

    Mainline torchsparse has no depthwise convolution; the fork's ``Conv3d`` takes
    ``depthwise=True`` and a kernel of shape ``(kh·kw, 1, C)``. Coordinates are
    ``(0, y, x, batch)`` with a ``(1, kh, kw)`` kernel, as in the reference code. The parity
    test in ``tests/test_sparse_conv.py`` checks this path against ``"dense"`` when available.
    """
    import torchsparse
    from torch.func import functional_call
    from torchsparse import nn as spnn

    b, n, c = x.shape
    h, w = lat.grid
    kh, kw = lat.kernel_size
    idx = lat.indices
    batch = torch.arange(b, device=x.device).view(b, 1).expand(b, n)
    coords = torch.stack([torch.zeros_like(idx), idx // w, idx % w, batch], -1).reshape(-1, 4)
    st = torchsparse.SparseTensor(coords=coords.int(), feats=x.reshape(b * n, c))
    try:
        conv = spnn.Conv3d(c, c, kernel_size=(1, kh, kw), depthwise=True, bias=False)
    except TypeError as err:
        raise ImportError("this torchsparse build has no depthwise convolution (needs the ∞-Diff fork)") from err
    kernel = weight.reshape(c, kh * kw).t().unsqueeze(1)  # (K, 1, C), tap order row-major (y, x)
    out = functional_call(conv.to(x.device), {"kernel": kernel}, (st,))
    return out.feats.view(b, n, c)


def sparse_depthwise_conv(x: Tensor, weight: Tensor, lattice: PointLattice) -> Tensor:
    """Normalised sparse depthwise convolution of point features (eq. 16, Monte Carlo).

    Args:
        x: ``(B, N, C)`` features at the points of ``lattice``.
        weight: ``(C, 1, kh, kw)`` kernel already resized to ``lattice.kernel_size``.
        lattice: :class:`PointLattice` of the points.

    Returns:
        ``(B, N, C)``: ``(k_train² / n(c)) · Σ w · x`` over the sampled neighbours.
    """
    if lattice.backend == "dense":
        out = _conv_dense(x, _same_conv(weight), lattice, bf16=max(weight.shape[-2:]) <= BF16_MAX_KERNEL)
    elif lattice.backend == "pairs":
        out = pairs_depthwise_conv(x, weight, lattice.pairs)
    else:
        out = _conv_torchsparse(x, weight, lattice)
    return out * lattice.norm.to(out.dtype)


class SparseDepthwiseConv2d(nn.Module):
    """Depthwise sparse convolution with a kernel defined at ``train_resolution``.

    Args:
        channels: feature channels (one kernel per channel, no bias).
        kernel_size: odd kernel size at the training resolution (∞-Diff: 7).
        train_resolution: grid side the kernel is defined at; other grids resize it.
    """

    def __init__(self, channels: int, kernel_size: int = 7, train_resolution: int = 64) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.train_resolution = train_resolution
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # as nn.Conv2d, fan_in = k²

    def kernel(self, size: tuple[int, int], scale: tuple[float, float]) -> Tensor:
        """The kernel resampled to ``size`` at grid ratio ``scale`` (identity at ``s = 1``), in the
        weight's precision even under autocast (the sparse conv itself runs in fp32)."""
        with torch.autocast(self.weight.device.type, enabled=False):
            return resize_kernel(self.weight, size, scale)

    def forward(self, x: Tensor, lattice: PointLattice) -> Tensor:
        """``(B, N, C)`` -> ``(B, N, C)`` on the points described by ``lattice``.

        On the dense canvas at an integer multiple of the training grid the resized kernel is
        applied in its exact factored form (:func:`tent_factored_conv2d`), never built.
        """
        scales = integer_scales(lattice.scale) if lattice.backend == "dense" else None
        if scales is not None:
            out = _conv_dense(x, lambda canvas: tent_factored_conv2d(canvas, self.weight, scales), lattice)
            return out * lattice.norm.to(out.dtype)
        return sparse_depthwise_conv(x, self.kernel(lattice.kernel_size, lattice.scale), lattice)
