"""Kernel map (rulebook) of a sparse convolution on lattice points, and a depthwise conv over it.

This is what sparse convolution libraries (MinkowskiEngine, torchsparse, spconv) build on the
GPU: the list of (output point, input point, kernel tap) triples with both points sampled.
Convolving over it costs ``O(N·ρ·k²·C)`` for density ``ρ`` instead of the dense canvas's
``O(H·W·k²·C)``, which is what makes subsampled training (∞-Diff section 4.3) cheaper.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["KernelMap", "kernel_map", "pairs_depthwise_conv"]


TapRuns = list[tuple[int, int, int]]
KernelMap = tuple[Tensor, Tensor, Tensor, TapRuns]


def kernel_map(indices: Tensor, grid: tuple[int, int], ksize: tuple[int, int]) -> KernelMap:
    """All (output point, input point, tap) triples with both points sampled, grouped by tap.

    Follows ``conv2d``'s cross-correlation: tap ``(i, j)`` of output pixel ``(y, x)`` reads
    input pixel ``(y + i - kh//2, x + j - kw//2)``. Point ids are flat over the batch. The
    triples are sorted by tap (stable), so each tap's pairs are one contiguous run; the
    ``(tap, start, stop)`` runs are computed here, once per lattice, so the convolutions that
    share the lattice need no host synchronisation.
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
        # (K, B·N) order: nonzero then walks tap by tap
        tap_idx, out_idx = torch.nonzero(nbr.t() >= 0, as_tuple=True)
        inp_idx = nbr[out_idx, tap_idx]
    return out_idx, inp_idx, tap_idx, _tap_runs(tap_idx, kh * kw)


def _tap_runs(tap_idx: Tensor, taps: int) -> TapRuns:
    """``(tap, start, stop)`` of each non-empty contiguous run of a tap-sorted ``tap_idx``."""
    counts = torch.bincount(tap_idx, minlength=taps).tolist()
    runs, start = [], 0
    for k, c in enumerate(counts):
        if c:
            runs.append((k, start, start + c))
        start += c
    return runs


class _PairsConv(torch.autograd.Function):
    """Kernel-map depthwise conv, one tap at a time.

    Per tap ``k``: ``out[o] += w_k ⊙ x[i]`` over its ``(o, i)`` pairs. Looping over the ``K``
    taps instead of gathering all ``M`` pairs at once keeps temporaries at ``M/K`` rows (the
    all-pairs form held two ``(M, C)`` fp32 buffers, the largest allocations of a subsampled
    training step) and needs no per-pair gather of the weights. Saves only its inputs.
    """

    @staticmethod
    def forward(ctx, x: Tensor, wflat: Tensor, out_idx: Tensor, inp_idx: Tensor, runs: TapRuns) -> Tensor:  # noqa: ANN001
        ctx.runs = runs
        ctx.save_for_backward(x, wflat, out_idx, inp_idx)
        dt = wflat.dtype
        out = torch.zeros(x.shape, dtype=dt, device=x.device)
        for k, a, e in runs:
            out.index_add_(0, out_idx[a:e], x.index_select(0, inp_idx[a:e]).to(dt).mul_(wflat[k]))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        x, wflat, out_idx, inp_idx = ctx.saved_tensors
        grad = grad.to(wflat.dtype)
        grad_x = torch.zeros(x.shape, dtype=wflat.dtype, device=x.device) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(wflat) if ctx.needs_input_grad[1] else None
        for k, a, e in ctx.runs:
            g = grad.index_select(0, out_idx[a:e])  # (M_k, C)
            if grad_w is not None:
                grad_w[k] = (x.index_select(0, inp_idx[a:e]).to(g.dtype) * g).sum(0)
            if grad_x is not None:
                grad_x.index_add_(0, inp_idx[a:e], g.mul_(wflat[k]))
        return (None if grad_x is None else grad_x.to(x.dtype)), grad_w, None, None, None


def pairs_depthwise_conv(x: Tensor, weight: Tensor, pairs: KernelMap) -> Tensor:
    """Un-normalised depthwise conv ``Σ_taps w·x`` of ``(B, N, C)`` points over a kernel map.

    The input is kept (and saved for backward) in its own dtype, e.g. bf16 under autocast;
    products and sums are accumulated in fp32 (fp64 for fp64 inputs). Returns the input dtype.
    """
    b, n, c = x.shape
    dt = torch.promote_types(x.dtype, torch.float32)  # accumulate in fp32 (fp64 if given)
    wflat = weight.reshape(c, -1).t().to(dt).contiguous()  # (K, C)
    out_idx, inp_idx, _, runs = pairs
    out = _PairsConv.apply(x.reshape(b * n, c), wflat, out_idx, inp_idx, runs)
    return out.view(b, n, c).to(x.dtype)
