"""Exact sparse depthwise convolution on pixel-lattice points (∞-Diff, section 4.3, eq. 16).

The sparse level of ∞-Diff applies a translation-invariant, depthwise kernel to the sampled
points only and normalises by the number of sampled neighbours, a Monte-Carlo estimate of

    x(c) = ∫_{N(c)} κ(c - y) v(y) dy   ≈   (k² / n(c)) Σ_{y ∈ N(c) ∩ sample} w(c - y) v(y),

where ``k²`` is the number of taps of the kernel at the training resolution and ``n(c)`` the
number of sampled points inside the (resized) window around ``c``. With every point present
at the training resolution ``n(c) = k²`` away from the border, so the operator is a plain
depthwise convolution there; near the border and on sparse subsets it re-weights the sum so
that its response to a constant field stays the same.

Backends (all exact, selected by name, e.g. from YAML):

* ``"dense"``: scatter the points onto a zero canvas stored channels-last, run one depthwise
  ``conv2d``, gather back. Costs ``O(H·W·k²·C)`` whatever the number of points: best when most
  pixels are sampled.
* ``"pairs"``: a kernel map of (output point, input point, tap) triples, i.e. what sparse
  convolution libraries do, in plain PyTorch with a memory-lean custom backward. Costs
  ``O(N·ρ·k²·C)`` for density ``ρ``: best for subsampled training.
* ``"auto"`` (default): ``"pairs"`` when the sampling density is at most
  :data:`AUTO_PAIRS_MAX_DENSITY`, else ``"dense"``.
* ``"torchsparse"``: optional accelerator for CUDA users; raises a clear error when missing.

Resolution transfer: at a grid ``H' x W'`` the kernel is resampled bilinearly to an odd size
per axis (:func:`resized_kernel_size`), and the normalisation keeps the response consistent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..coords import check_grid

__all__ = [
    "AUTO_PAIRS_MAX_DENSITY",
    "SPARSE_BACKENDS",
    "PointLattice",
    "SparseDepthwiseConv2d",
    "resized_kernel_size",
    "resize_kernel",
    "sparse_depthwise_conv",
    "torchsparse_available",
]

SPARSE_BACKENDS = ("auto", "dense", "pairs", "torchsparse")
#: Above this fraction of sampled pixels the dense canvas is faster (measured on CPU, see
#: ``benchmarks/bench_sparse.py``).
AUTO_PAIRS_MAX_DENSITY = 0.2


def torchsparse_available() -> bool:
    """Whether the optional ``torchsparse`` package can be imported."""
    try:
        import torchsparse  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


def resized_kernel_size(kernel_size: int, train_size: int, size: int) -> int:
    """Odd kernel size at a new resolution.

    The taps of a kernel of radius ``r = (k - 1) / 2`` sit at ``-r..r`` training pixels, i.e.
    ``-r·s..r·s`` pixels at a grid ``s = size / train_size`` times finer, so the new radius is
    ``round(r·s)`` (halves rounded up) and the size ``2·round(r·s) + 1`` (≈ ``k·s``). At
    integer scale factors the new taps include the old tap positions exactly.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if size == train_size:
        return kernel_size
    radius = (kernel_size - 1) / 2 * size / train_size
    return 2 * int(math.floor(radius + 0.5)) + 1


def resize_kernel(weight: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resample a depthwise kernel ``(C, 1, k, k)`` to ``(C, 1, kh, kw)``.

    ``align_corners=True`` maps the outer taps onto the outer taps, so the kernel keeps its
    extent in domain units (paper, section 5: "bi-linearly interpolating kernels").
    """
    if tuple(weight.shape[-2:]) == tuple(size):
        return weight
    if min(weight.shape[-2:]) == 1 or min(size) == 1:
        return F.interpolate(weight, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(weight, size=size, mode="bilinear", align_corners=True)


@dataclass
class PointLattice:
    """Where the points of a batch sit on their grid, plus cached neighbour structures.

    Built once per forward pass and shared by every sparse convolution of the network.

    Attributes:
        indices: ``(B, N)`` flat row-major pixel indices of the points.
        grid: ``(H, W)``.
        kernel_size: ``(kh, kw)`` resized kernel size at this grid.
        norm: ``(B, N, 1)`` factor ``k_train² / n(c)`` (fp32).
        backend: resolved backend (``"dense"``, ``"pairs"`` or ``"torchsparse"``).
        pairs: for ``"pairs"``: ``(out, inp, tap)`` flat indices into ``B·N`` points and taps.
    """

    indices: Tensor
    grid: tuple[int, int]
    kernel_size: tuple[int, int]
    norm: Tensor
    backend: str
    pairs: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def build(
        cls,
        indices: Tensor,
        grid: tuple[int, int],
        kernel_size: int,
        train_resolution: int,
        backend: str = "auto",
    ) -> PointLattice:
        """Resolve the backend, resize the kernel window and count sampled neighbours.

        Args:
            indices: ``(B, N)`` unique flat pixel indices per example.
            grid: ``(H, W)`` of the points.
            kernel_size: odd kernel size at ``train_resolution``.
            train_resolution: grid side the kernel was trained at.
            backend: one of :data:`SPARSE_BACKENDS`.
        """
        h, w = check_grid(grid)
        if backend not in SPARSE_BACKENDS:
            raise ValueError(f"unknown sparse backend {backend!r}; choose one of {SPARSE_BACKENDS}")
        if backend == "torchsparse" and not torchsparse_available():
            raise ImportError(
                "sparse backend 'torchsparse' was selected but torchsparse is not importable; "
                "install a torchsparse build with depthwise support (CUDA only) or use "
                "backend='auto' (pure PyTorch, exact)"
            )
        b, n = indices.shape
        if backend == "auto":
            backend = "pairs" if n <= AUTO_PAIRS_MAX_DENSITY * h * w else "dense"
        kh = resized_kernel_size(kernel_size, train_resolution, h)
        kw = resized_kernel_size(kernel_size, train_resolution, w)
        pairs = _kernel_map(indices, (h, w), (kh, kw)) if backend in ("pairs", "torchsparse") else None
        with torch.no_grad():
            if pairs is not None:
                count = torch.bincount(pairs[0], minlength=b * n).view(b, n, 1).float()
            else:
                mask = torch.zeros(b, h * w, device=indices.device)
                mask.scatter_(1, indices, 1.0)
                ones = torch.ones(1, 1, kh, kw, device=indices.device)
                count = F.conv2d(mask.view(b, 1, h, w), ones, padding=(kh // 2, kw // 2))
                count = torch.gather(count.view(b, h * w), 1, indices).unsqueeze(-1)
            norm = float(kernel_size**2) / count.clamp_min(1.0)
        return cls(indices, (h, w), (kh, kw), norm, backend, pairs)


def _kernel_map(indices: Tensor, grid: tuple[int, int], ksize: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
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
        g = grad.index_select(0, out_idx)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.zeros_like(x).index_add_(0, inp_idx, g * wflat.index_select(0, tap_idx))
        if ctx.needs_input_grad[1]:
            grad_w = torch.zeros_like(wflat).index_add_(0, tap_idx, g.mul_(x.index_select(0, inp_idx)))
        return grad_x, grad_w, None, None, None


def _conv_dense(x: Tensor, weight: Tensor, lat: PointLattice) -> Tensor:
    b, n, c = x.shape
    h, w = lat.grid
    kh, kw = lat.kernel_size
    idx = lat.indices.unsqueeze(-1).expand(b, n, c)
    # (B, H*W, C) is the channels-last layout of (B, C, H, W): no copies around the conv.
    canvas = torch.zeros(b, h * w, c, dtype=x.dtype, device=x.device).scatter(1, idx, x)
    canvas = canvas.view(b, h, w, c).permute(0, 3, 1, 2)
    out = F.conv2d(canvas, weight.to(canvas.dtype), padding=(kh // 2, kw // 2), groups=c)
    out = out.permute(0, 2, 3, 1).reshape(b, h * w, c)
    return torch.gather(out, 1, idx)


def _conv_pairs(x: Tensor, weight: Tensor, lat: PointLattice) -> Tensor:
    b, n, c = x.shape
    assert lat.pairs is not None
    wflat = weight.reshape(c, -1).t().float().contiguous()  # (K, C)
    out = _PairsConv.apply(x.reshape(b * n, c).float(), wflat, *lat.pairs)
    return out.view(b, n, c).to(x.dtype)


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
        out = _conv_dense(x, weight, lattice)
    elif lattice.backend == "pairs":
        out = _conv_pairs(x, weight, lattice)
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

    def kernel(self, size: tuple[int, int]) -> Tensor:
        """The kernel resampled to ``size`` (identity at the training size)."""
        return resize_kernel(self.weight, size)

    def forward(self, x: Tensor, lattice: PointLattice) -> Tensor:
        """``(B, N, C)`` -> ``(B, N, C)`` on the points described by ``lattice``."""
        return sparse_depthwise_conv(x, self.kernel(lattice.kernel_size), lattice)
