"""Where a batch's points sit on their grid: backend choice, kernel window and neighbour counts.

:class:`PointLattice` is built once per forward pass (no gradients) and shared by every sparse
convolution: the resolved backend, the resized kernel size, the kernel map of the ``"pairs"``
backend (:mod:`.kernel_map`) and the normalisation ``k² / (s_y·s_x·n(c))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ....coords import as_grid, check_grid
from .kernel import integer_scales, resize_kernel, resized_kernel_size, tent_factored_conv2d
from .kernel_map import KernelMap, kernel_map

__all__ = ["AUTO_PAIRS_MAX_DENSITY", "SPARSE_BACKENDS", "PointLattice", "torchsparse_available"]

SPARSE_BACKENDS = ("auto", "dense", "pairs", "torchsparse")
#: Above this fraction of sampled pixels the dense canvas is faster at the training resolution
#: (measured on CPU, ``git show 7df682e:benchmarks/results/backends.md``).
AUTO_PAIRS_MAX_DENSITY = 0.2


def torchsparse_available() -> bool:
    """Whether the optional ``torchsparse`` package can be imported."""
    try:
        import torchsparse  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


@dataclass
class PointLattice:
    """Where the points of a batch sit on their grid, plus cached neighbour structures.

    Built once per forward pass and shared by every sparse convolution of the network.

    Attributes:
        indices: ``(B, N)`` flat row-major pixel indices of the points.
        grid: ``(H, W)``.
        kernel_size: ``(kh, kw)`` resized kernel size at this grid.
        scale: ``(s_y, s_x) = (d_y, d_x) / train_resolution``, ``d`` the grid's pixels per domain unit
            (``(H, W)`` on the unit square).
        norm: ``(B, N, 1)`` factor ``k² / (s_y·s_x·n(c))`` (fp32), ``n(c)`` the sampled
            neighbours weighted by the resampled window (the plain count at ``s = 1``).
        backend: resolved backend (``"dense"``, ``"pairs"`` or ``"torchsparse"``).
        pairs: for ``"pairs"``: ``(out, inp, tap, runs)``: flat indices into ``B·N`` points and
            taps, and each tap's contiguous run (see :func:`.kernel_map.kernel_map`).
        full_grid: every example holds all ``H·W`` pixels in row-major order (as when sampling);
            the dense backend then convolves the points in place, without a canvas.
    """

    indices: Tensor
    grid: tuple[int, int]
    kernel_size: tuple[int, int]
    scale: tuple[float, float]
    norm: Tensor
    backend: str
    pairs: KernelMap | None = None
    full_grid: bool = False

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
            grid: ``(H, W)`` of the points (a :class:`~lightning_infdiff.coords.Grid` says how many
                pixels a domain unit spans; a plain tuple is the unit square).
            kernel_size: odd kernel size at ``train_resolution``.
            train_resolution: grid side the kernel was trained at.
            backend: one of :data:`SPARSE_BACKENDS`.
        """
        h, w = check_grid(grid)
        dy, dx = as_grid(grid).density  # pixels per domain unit: the kernel's support is fixed there
        if backend not in SPARSE_BACKENDS:
            raise ValueError(f"unknown sparse backend {backend!r}; choose one of {SPARSE_BACKENDS}")
        if backend == "torchsparse" and not torchsparse_available():
            raise ImportError(
                "sparse backend 'torchsparse' was selected but torchsparse is not importable; "
                "install a torchsparse build with depthwise support (CUDA only) or use "
                "backend='auto' (pure PyTorch, exact)"
            )
        b, n = indices.shape
        kh = resized_kernel_size(kernel_size, train_resolution, dy)
        kw = resized_kernel_size(kernel_size, train_resolution, dx)
        if backend == "auto":
            resized = (kh, kw) != (kernel_size, kernel_size)
            backend = "pairs" if not resized and n <= AUTO_PAIRS_MAX_DENSITY * h * w else "dense"
        pairs = kernel_map(indices, (h, w), (kh, kw)) if backend in ("pairs", "torchsparse") else None
        sy, sx = dy / train_resolution, dx / train_resolution
        # fp32 counts even under autocast (einsum in resize_kernel would otherwise run in bf16)
        with torch.no_grad(), torch.autocast(indices.device.type, enabled=False):
            # Sampled-neighbour count, each neighbour weighted by the resampled window (all ones
            # at the training resolution, tapering over the interpolation tent elsewhere), so
            # that the count estimates the same window area at every resolution.
            ones = torch.full((1, 1, kernel_size, kernel_size), 1.0 / (sy * sx), device=indices.device)
            scales = integer_scales((sy, sx))
            if pairs is not None or scales is None:
                box = resize_kernel(ones, (kh, kw), (sy, sx))
            if pairs is not None:
                count = torch.zeros(b * n, device=indices.device)
                count.index_add_(0, pairs[0], box.reshape(-1)[pairs[2]])
                count = count.view(b, n, 1)
            else:
                mask = torch.zeros(b, h * w, device=indices.device)
                mask.scatter_(1, indices, 1.0)
                if scales is not None:  # the same window, factored (exact; see tent_factored_conv2d)
                    count = tent_factored_conv2d(mask.view(b, 1, h, w), ones, scales)
                else:
                    count = F.conv2d(mask.view(b, 1, h, w), box, padding=(kh // 2, kw // 2))
                count = torch.gather(count.view(b, h * w), 1, indices).unsqueeze(-1)
            norm = float(kernel_size**2) / (sy * sx * count.clamp_min(1e-6))
            full = n == h * w and bool((indices == torch.arange(n, device=indices.device)).all())
        return cls(indices, (h, w), (kh, kw), (sy, sx), norm, backend, pairs, full)
