"""Exact sparse depthwise convolution on pixel-lattice points (∞-Diff, section 4.3, eq. 16).

By concept: :mod:`.kernel` (kernel resizing), :mod:`.lattice` (the points' backend, window and
neighbour counts) with :mod:`.kernel_map` (the ``"pairs"`` backend's pair lists and conv),
:mod:`.op` (the dense backend's custom operator and its gradients), :mod:`.module` (the
convolution and :class:`SparseDepthwiseConv2d`). The public names are re-exported here.

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
  and dense was faster at every density measured (``git show 7df682e:benchmarks/results/backends.md``).
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

from .kernel import integer_scales, resize_kernel, resized_kernel_size, tent_factored_conv2d
from .lattice import AUTO_PAIRS_MAX_DENSITY, SPARSE_BACKENDS, PointLattice, torchsparse_available
from .module import BF16_MAX_KERNEL, SparseDepthwiseConv2d, sparse_depthwise_conv
from .op import (
    _depthwise_weight_grad as _depthwise_weight_grad,  # for the kernel study (git history)
)
from .op import _native_cpu_bf16 as _native_cpu_bf16  # for tests/test_precision_choice.py
from .op import depthwise_same_conv

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
    "depthwise_same_conv",
    "tent_factored_conv2d",
    "torchsparse_available",
]
