"""Exact sparse depthwise convolution on pixel-lattice points (∞-Diff, section 4.3, eq. 16).

The sparse level of ∞-Diff applies a translation-invariant, depthwise kernel to the sampled
points only and normalises by the number of sampled neighbours, a Monte-Carlo estimate of

    x(c) = ∫_{N(c)} κ(c - y) v(y) dy  ≈  k² / (s_y s_x n(c)) · Σ_{y ∈ N(c) ∩ sample} w(c - y) v(y),

where ``w`` is the kernel resized to the grid (``k`` its size at the training resolution,
``s = grid / training grid`` per axis) and ``n(c)`` the number of sampled points inside the
window around ``c``, in training-pixel area units (each neighbour weighted by the resampled
all-ones window ``b``: at ``s = 1`` simply the count).
At the training resolution with every point present, ``n(c) = k²`` away from the border and
the operator is exactly a plain depthwise convolution; on subsets, near borders and at other
resolutions it is the Monte-Carlo estimate of the same integral (its response to a constant
field is ``Σ w_train`` everywhere).

Backends (all exact, selected by name, e.g. from YAML):

* ``"dense"``: scatter the points onto a zero canvas stored channels-last, run one depthwise
  ``conv2d``, gather back. Costs ``O(H·W·k²·C)`` whatever the number of points: best when most
  pixels are sampled.
* ``"pairs"``: a kernel map of (output point, input point, tap) triples, i.e. what sparse
  convolution libraries do, in plain PyTorch with a memory-lean custom backward. Costs
  ``O(N·ρ·k²·C)`` for density ``ρ``: best for subsampled training.
* ``"auto"`` (default): ``"pairs"`` when the sampling density is at most
  :data:`AUTO_PAIRS_MAX_DENSITY` and the grid is the training grid, else ``"dense"``. On other
  grids the kernel is resized (``k' ≈ k·s`` taps per side): the kernel map then enumerates
  ``N·k'²`` window taps, while the dense canvas runs the factored ``k² + 2(2s - 1)``-tap form,
  and dense was faster at every density measured (``benchmarks/results/backends.md``).
* ``"torchsparse"``: optional accelerator for CUDA users; raises a clear error when missing.

Resolution transfer: at a grid ``H' x W'`` the kernel is resampled bilinearly to an odd size
per axis (:func:`resized_kernel_size`, :func:`resize_kernel`), and the normalisation keeps
the response consistent.

Fast path for sampling at integer multiples of the training resolution: the resized kernel
``w' = M_y w M_xᵀ`` is a sum of tents centred on the dilated training taps, so the dense
convolution factors exactly into a ``(2s-1)``-tap tent filter followed by the ``k x k``
training kernel dilated by ``s`` (:func:`tent_factored_conv2d`). Its cost per pixel is
``k² + 2(2s-1)`` instead of ``k'² ≈ (k·s)²``, which keeps sampling linear in the number of
pixels (measured in ``benchmarks/bench_sampling.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import register_flop_formula

from ...coords import as_grid, check_grid
from .sno_kernel_map import KernelMap, kernel_map, pairs_depthwise_conv

__all__ = [
    "AUTO_PAIRS_MAX_DENSITY",
    "BF16_MAX_KERNEL",
    "SPARSE_BACKENDS",
    "PointLattice",
    "SparseDepthwiseConv2d",
    "integer_scales",
    "resized_kernel_size",
    "resize_kernel",
    "sparse_depthwise_conv",
    "tent_factored_conv2d",
    "torchsparse_available",
]

SPARSE_BACKENDS = ("auto", "dense", "pairs", "torchsparse")
#: Above this fraction of sampled pixels the dense canvas is faster at the training resolution
#: (measured on CPU, ``benchmarks/results/backends.md``).
AUTO_PAIRS_MAX_DENSITY = 0.2


def torchsparse_available() -> bool:
    """Whether the optional ``torchsparse`` package can be imported."""
    try:
        import torchsparse  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


def _axis_scale(train_size: int, size: int) -> float:
    return size / train_size


def resized_kernel_size(kernel_size: int, train_size: int, size: int) -> int:
    """Odd kernel size at a grid ``s = size / train_size`` times finer than the training grid.

    The resized kernel (:func:`resize_kernel`) is the bilinear interpolant of the zero-padded
    training kernel, so its support reaches ``r + h`` training pixels (``r = (k - 1) / 2``,
    ``h = max(1, 1/s)`` the half-width of the interpolation tent), i.e.
    ``r' = ceil((r + h)·s) - 1`` new pixels and ``k' = 2r' + 1`` (≈ ``k·s``: 7 -> 15 at 2x,
    31 at 4x, 5 at 0.5x; ``k`` itself at ``s = 1``).
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if size == train_size:
        return kernel_size
    s = _axis_scale(train_size, size)
    r = (kernel_size - 1) / 2
    return 2 * (math.ceil((r + max(1.0, 1.0 / s)) * s - 1e-9) - 1) + 1


def _resample_matrix(k: int, k_new: int, s: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(k_new, k)`` tent weights: new tap ``i`` sits at ``(i - r') / s`` training pixels."""
    r, r_new = (k - 1) / 2, (k_new - 1) / 2
    hw = max(1.0, 1.0 / s)
    p = (torch.arange(k_new, device=device, dtype=torch.float64) - r_new) / s
    q = torch.arange(k, device=device, dtype=torch.float64) - r
    m = (1.0 - (p[:, None] - q[None, :]).abs() / hw).clamp_min(0.0) * min(1.0, s)
    return m.to(dtype)


def resize_kernel(weight: Tensor, size: tuple[int, int], scale: tuple[float, float]) -> Tensor:
    """Resample a depthwise kernel ``(C, 1, k, k)`` to ``(C, 1, kh, kw)`` for a finer grid.

    Bilinear interpolation of the zero-padded kernel at the new tap positions (a triangle
    filter of half-width ``1/s`` when coarsening, i.e. antialiased). The tent weights of every
    old tap sum to ``s`` per axis, so the kernel's mass scales by exactly ``s_y·s_x`` at integer
    factors (the normalisation in :class:`PointLattice` divides it out) and at integer
    upsampling the old taps are reproduced exactly (paper, section 5: bilinear kernels).

    Args:
        weight: ``(C, 1, k, k)`` kernel at the training resolution.
        size: ``(kh, kw)`` from :func:`resized_kernel_size`.
        scale: ``(s_y, s_x)`` grid-size ratios to the training resolution.
    """
    k = weight.shape[-1]
    if tuple(size) == (k, k) and tuple(scale) == (1.0, 1.0):
        return weight
    my = _resample_matrix(k, size[0], scale[0], weight.device, weight.dtype)
    mx = _resample_matrix(k, size[1], scale[1], weight.device, weight.dtype)
    return torch.einsum("ik,cakl,jl->caij", my, weight, mx)


def integer_scales(scale: tuple[float, float]) -> tuple[int, int] | None:
    """``(s_y, s_x)`` as integers when both are whole numbers ``>= 1`` and not both 1, else None.

    These are the grids where :func:`tent_factored_conv2d` reproduces the resized kernel exactly.
    """
    sy, sx = scale
    if sy < 1 or sx < 1 or not float(sy).is_integer() or not float(sx).is_integer() or (sy, sx) == (1, 1):
        return None
    return int(sy), int(sx)


def _tent(s: int, channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(2s-1)``-tap tent ``1 - |u|/s`` (:func:`_resample_matrix`'s weights at integer ``s``)."""
    u = torch.arange(-(s - 1), s, device=device, dtype=torch.float64)
    return (1.0 - u.abs() / s).to(dtype).expand(channels, -1)


def tent_factored_conv2d(x: Tensor, weight: Tensor, scales: tuple[int, int]) -> Tensor:
    """Zero-padded "same" depthwise conv with ``resize_kernel(weight)`` at integer grid ratios.

    With tents ``t(u) = max(0, 1 - |u|/s)`` the resized kernel is
    ``w'(a, b) = Σ_{i,j} w(i, j) t_y(a - i s_y) t_x(b - j s_x)`` (offsets from the centres), so

        (x ⋆ w')(p) = Σ_{i,j} w(i, j) · T(p + (i s_y, j s_x)),    T = x ⋆ (t_y ⊗ t_x),

    i.e. the tent-smoothed input (evaluated on the grid padded by ``r·s``, the input zero outside)
    followed by the training kernel dilated by ``s``: exact up to rounding, at a cost per pixel
    of ``k² + 2(2s - 1)`` instead of ``k'²``.

    Args:
        x: ``(B, C, H, W)`` canvas (any memory format).
        weight: ``(C, 1, k, k)`` kernel at the training resolution (``k`` odd).
        scales: integer ``(s_y, s_x)`` from :func:`integer_scales`.
    """
    c = x.shape[1]
    k = weight.shape[-1]
    r = (k - 1) // 2
    sy, sx = scales
    # Pad by the resized radius r' = (r + 1)s - 1: the tent (half-width s - 1) then yields T on
    # the grid extended by r·s, exactly where the dilated kernel reads it.
    py, px = (r + 1) * sy - 1, (r + 1) * sx - 1
    t = F.pad(x, (px, px, py, py))
    if sy > 1:
        t = F.conv2d(t, _tent(sy, c, x.dtype, x.device).reshape(c, 1, -1, 1), groups=c)
    if sx > 1:
        t = F.conv2d(t, _tent(sx, c, x.dtype, x.device).reshape(c, 1, 1, -1), groups=c)
    return F.conv2d(t, weight.to(x.dtype), dilation=(sy, sx), groups=c)


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
            taps, and each tap's contiguous run (see :func:`.sno_kernel_map.kernel_map`).
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
        sy, sx = _axis_scale(train_resolution, dy), _axis_scale(train_resolution, dx)
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


#: Largest kernel side run in bf16 by the dense backend (larger, resized kernels stay fp32).
BF16_MAX_KERNEL = 9


#: Channels per block of the bf16 depthwise weight gradient (see :func:`_depthwise_weight_grad`).
_WGRAD_BLOCKS = (8, 4)


@functools.cache
def _native_cpu_bf16() -> bool:
    from ...precision import cpu_bf16_support

    return bool(cpu_bf16_support()[0])


def _native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA, or a CPU per :func:`~lightning_infdiff.precision.cpu_bf16_support`)."""
    return device.type != "cpu" or _native_cpu_bf16()


def _depthwise_weight_grad(grad: Tensor, canvas: Tensor, weight: Tensor, padding: tuple[int, int]) -> Tensor:
    """Weight gradient ``dW[c, i, j] = Σ_{b,y,x} g[b,c,y,x] · x_pad[b,c,y+i,x+j]`` of a "same"
    depthwise conv (``groups = C``), for a bf16 ``grad`` and ``canvas``; returned in ``weight``'s dtype.

    oneDNN's depthwise weight gradient on CPU is several times slower in bf16 than in fp32, but
    its *grouped* conv weight gradient is fast (``benchmarks/results/kernels.md``). So the gradient of a
    conv with ``C / k`` groups of ``k`` channels (every channel against every channel of its
    block) is computed, and the depthwise gradient is its block diagonal
    ``dW[c] = dW_blocks[c, c mod k]``: ``k`` times the products, in bf16 with fp32 accumulation,
    rounded to bf16 like every autocast conv's weight gradient. With ``k = 8`` it beats even
    fp32's depthwise gradient on CPUs with native bf16 (``benchmarks/results/kernels.md``).
    Channel counts with no block of 8 or 4, and CPUs without native bf16 (where oneDNN's
    emulated bf16 grouped conv does not keep the error within one bf16 rounding: measured on an
    AVX2-only AMD EPYC, ``tests/test_sparse_conv.py``), take the fp32 depthwise gradient.
    """
    c, _, kh, kw = weight.shape
    args = ((1, 1), padding, (1, 1), False, (0, 0))
    k = next((k for k in _WGRAD_BLOCKS if c % k == 0), None)
    if k is None or not _native_bf16(grad.device):
        return torch.ops.aten.convolution_backward(
            grad.float(), canvas.float(), weight.float(), None, *args, c, (False, True, False))[1].to(weight.dtype)
    blocks = torch.ops.aten.convolution_backward(
        grad, canvas, canvas.new_empty(c, k, kh, kw), None, *args, c // k, (False, True, False))[1]
    # (C/k, k out, k in, taps): the diagonal pairs each channel with itself
    diag = blocks.view(c // k, k, k, kh * kw).diagonal(dim1=1, dim2=2)  # (C/k, taps, k)
    return diag.transpose(1, 2).reshape(c, 1, kh, kw).to(weight.dtype)


# The dense backend's training conv is a custom operator (forward, input gradient and weight
# gradient each an opaque op with its own autograd formula) rather than an autograd.Function:
# torch.compile then passes the canvas and its gradient in the channels-last layout eager
# uses. Traced as plain ops, inductor stored them in other layouts (e.g. strides
# (32768, 32, 1024, 1)), on which oneDNN's depthwise backward is several times slower, which
# made the compiled quickstart step slower than eager.
_CONV_SCHEMA = "(Tensor canvas, Tensor weight, int pad_h, int pad_w) -> Tensor"
_GRAD_SCHEMA = "(Tensor grad, Tensor canvas, Tensor weight, int pad_h, int pad_w) -> Tensor"


def _conv_args(canvas: Tensor, pad_h: int, pad_w: int) -> tuple:
    return (1, 1), (pad_h, pad_w), (1, 1), False, (0, 0), canvas.shape[1]


def _depthwise_same_conv(canvas: Tensor, weight: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """"Same" depthwise conv of a ``(B, C, H, W)`` canvas (any layout, fp32 or bf16) with an fp32
    ``(C, 1, kh, kw)`` weight, computed in the canvas's dtype.

    A bf16 canvas keeps the sparse level's activations bf16 (no fp32 canvas and casts). oneDNN's
    bf16 depthwise forward and input gradient accumulate in fp32; their timings vary between
    processes (bf16 forward 0.5x to 2x fp32's, ``benchmarks/results/kernels.md``).
    """
    return F.conv2d(canvas, weight.to(canvas.dtype), padding=(pad_h, pad_w), groups=canvas.shape[1])


def _depthwise_same_conv_input_grad(grad: Tensor, canvas: Tensor, weight: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Gradient of :func:`_depthwise_same_conv` with respect to the canvas (the canvas's dtype)."""
    mask = (True, False, False)
    return torch.ops.aten.convolution_backward(grad, canvas, weight.to(grad.dtype), None,
                                               *_conv_args(canvas, pad_h, pad_w), mask)[0]


def _depthwise_same_conv_weight_grad(grad: Tensor, canvas: Tensor, weight: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Gradient of :func:`_depthwise_same_conv` with respect to the weight (the weight's dtype):
    bf16 through :func:`_depthwise_weight_grad`, otherwise oneDNN's depthwise gradient."""
    if canvas.dtype == torch.bfloat16:
        return _depthwise_weight_grad(grad, canvas, weight, (pad_h, pad_w))
    mask = (False, True, False)
    return torch.ops.aten.convolution_backward(grad, canvas, weight.to(canvas.dtype), None,
                                               *_conv_args(canvas, pad_h, pad_w), mask)[1].to(weight.dtype)


depthwise_same_conv = torch.library.custom_op(
    "lightning_infdiff::depthwise_same_conv", _depthwise_same_conv, mutates_args=(), schema=_CONV_SCHEMA)
_input_grad_op = torch.library.custom_op(
    "lightning_infdiff::depthwise_same_conv_input_grad", _depthwise_same_conv_input_grad, mutates_args=(),
    schema=_GRAD_SCHEMA)
_weight_grad_op = torch.library.custom_op(
    "lightning_infdiff::depthwise_same_conv_weight_grad", _depthwise_same_conv_weight_grad, mutates_args=(),
    schema=_GRAD_SCHEMA)


@depthwise_same_conv.register_fake
def _(canvas: Tensor, weight: Tensor, pad_h: int, pad_w: int) -> Tensor:
    return torch.empty_like(canvas)  # "same" conv, stride 1: the canvas's shape, dtype and layout


@_input_grad_op.register_fake
def _(grad: Tensor, canvas: Tensor, weight: Tensor, pad_h: int, pad_w: int) -> Tensor:
    return torch.empty_like(canvas)


@_weight_grad_op.register_fake
def _(grad: Tensor, canvas: Tensor, weight: Tensor, pad_h: int, pad_w: int) -> Tensor:
    return torch.empty_like(weight)


def _save_for_grad(ctx, inputs: tuple, output: Tensor) -> None:  # noqa: ANN001 - autograd context
    canvas, weight, pad_h, pad_w = inputs
    ctx.save_for_backward(canvas, weight)
    ctx.pad = (pad_h, pad_w)


def _grad(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # noqa: ANN001
    canvas, weight = ctx.saved_tensors
    g_in = _input_grad_op(grad, canvas, weight, *ctx.pad) if ctx.needs_input_grad[0] else None
    g_w = _weight_grad_op(grad, canvas, weight, *ctx.pad) if ctx.needs_input_grad[1] else None
    return g_in, g_w, None, None


depthwise_same_conv.register_autograd(_grad, setup_context=_save_for_grad)


def _depthwise_flops(*args, out_shape: object = None, **kwargs) -> int:  # noqa: ANN002, ANN003 - flop formula
    """FLOPs of one of the custom ops above for ``torch.utils.flop_counter.FlopCounterMode``.

    The forward, the input gradient and the weight gradient of a stride-1 "same" depthwise conv
    of a ``(B, C, H, W)`` canvas with a ``(C, 1, kh, kw)`` kernel each take ``B·C·H·W·kh·kw``
    multiply-adds, counted as ``2·B·C·H·W·kh·kw`` FLOPs (the counter's convention). The
    arguments arrive as shapes: ``(canvas, weight, ...)`` or ``(grad, canvas, weight, ...)``.
    This is the algorithm's count: the bf16 weight gradient's block-diagonal grouped conv
    (:func:`_depthwise_weight_grad`) does more products than that, which are not useful work.
    """
    shapes = [a for a in args if isinstance(a, (list, tuple)) and len(a) == 4]
    (b, c, h, w), (_, _, kh, kw) = shapes[-2], shapes[-1]
    return 2 * b * c * h * w * kh * kw


register_flop_formula([torch.ops.lightning_infdiff.depthwise_same_conv,
                       torch.ops.lightning_infdiff.depthwise_same_conv_input_grad,
                       torch.ops.lightning_infdiff.depthwise_same_conv_weight_grad])(_depthwise_flops)


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
