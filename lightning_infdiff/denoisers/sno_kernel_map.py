"""Kernel map (rulebook) of a sparse convolution on lattice points, and a depthwise conv over it.

This is what sparse convolution libraries (MinkowskiEngine, torchsparse, spconv) build on the
GPU: the list of (output point, input point, kernel tap) triples with both points sampled.
Convolving over it costs ``O(N·ρ·k²·C)`` for density ``ρ`` instead of the dense canvas's
``O(H·W·k²·C)``, which is what makes subsampled training (∞-Diff section 4.3) cheaper.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kernel_map", "pairs_depthwise_conv"]


def kernel_map(indices: Tensor, grid: tuple[int, int], ksize: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """All (output point, input point, tap) triples with both points sampled.

    Follows ``conv2d``'s cross-correlation: tap ``(i, j)`` of output pixel ``(y, x)`` reads
    input pixel ``(y + i - kh//2, x + j - kw//2)``. Point ids are flat over the batch.
    """
    h, w = grid
    kh, kw = ksize
    ry, rx = kh // 2, kw // 2
    b, n = indices.shape
    dev = indices.device
    with torch.no_grad():
        hp, wp = h + 2 * ry, w + 2 * rx
        pid = torch.full((b, hp * wp), -1, dtype=torch.long, device=dev)
        rows, cols = indices // w, indices % w
        padded = (rows + ry) * wp + (cols + rx)  # (B, N) flat positions on the padded canvas
        ids = torch.arange(b * n, device=dev).view(b, n)
        pid.scatter_(1, padded, ids)
        dy = torch.arange(kh, device=dev) - ry
        dx = torch.arange(kw, device=dev) - rx
        offsets = (dy[:, None] * wp + dx[None, :]).reshape(-1)  # (K,)
        taps = padded.unsqueeze(-1) + offsets  # (B, N, K)
        nbr = torch.gather(pid, 1, taps.view(b, -1)).view(b * n, kh * kw)
        out_idx, tap_idx = torch.nonzero(nbr >= 0, as_tuple=True)
        inp_idx = nbr[out_idx, tap_idx]
    return out_idx, inp_idx, tap_idx


class _PairsConv(torch.autograd.Function):
    """Kernel-map depthwise conv that saves only its inputs (no ``(M, C)`` activations)."""

    @staticmethod
    def forward(ctx, x: Tensor, wflat: Tensor, out_idx: Tensor, inp_idx: Tensor, tap_idx: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, wflat, out_idx, inp_idx, tap_idx)
        prod = x.index_select(0, inp_idx).mul_(wflat.index_select(0, tap_idx))
        return torch.zeros_like(x).index_add_(0, out_idx, prod)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        x, wflat, out_idx, inp_idx, tap_idx = ctx.saved_tensors
        g = grad.index_select(0, out_idx)  # (M, C)
        grad_x = grad_w = None
        # At most two (M, C) temporaries alive at once: weight gradient first, then g is
        # scaled in place for the input gradient.
        if ctx.needs_input_grad[1]:
            gx = x.index_select(0, inp_idx).mul_(g)
            grad_w = torch.zeros_like(wflat).index_add_(0, tap_idx, gx)
            del gx
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x).index_add_(0, inp_idx, g.mul_(wflat.index_select(0, tap_idx)))
        return grad_x, grad_w, None, None, None


def pairs_depthwise_conv(x: Tensor, weight: Tensor, pairs: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Un-normalised depthwise conv ``Σ_taps w·x`` of ``(B, N, C)`` points over a kernel map.

    Accumulates in fp32 (fp64 for fp64 inputs) and returns the input dtype.
    """
    b, n, c = x.shape
    dt = torch.promote_types(x.dtype, torch.float32)  # accumulate in fp32 (fp64 if given)
    wflat = weight.reshape(c, -1).t().to(dt).contiguous()  # (K, C)
    out = _PairsConv.apply(x.reshape(b * n, c).to(dt), wflat, *pairs)
    return out.view(b, n, c).to(x.dtype)
