"""The dense backend's "same" depthwise convolution as a custom operator with its own gradients.

``lightning_infdiff::depthwise_same_conv`` and its input and weight gradients are opaque
``torch.library`` operators (so ``torch.compile`` keeps eager's channels-last layouts), with a
FLOP formula for ``FlopCounterMode``; the bf16 weight gradient is a block-diagonal grouped conv
(:func:`_depthwise_weight_grad`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

__all__ = ["depthwise_same_conv"]

#: Channels per block of the bf16 depthwise weight gradient (see :func:`_depthwise_weight_grad`).
_WGRAD_BLOCKS = (8, 4)


@functools.cache
def _native_cpu_bf16() -> bool:
    from ....precision import cpu_bf16_support

    return bool(cpu_bf16_support()[0])


def _native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (CUDA, or a CPU per :func:`~lightning_infdiff.precision.cpu_bf16_support`)."""
    return device.type != "cpu" or _native_cpu_bf16()


def _depthwise_weight_grad(grad: Tensor, canvas: Tensor, weight: Tensor, padding: tuple[int, int]) -> Tensor:
    """Weight gradient ``dW[c, i, j] = Σ_{b,y,x} g[b,c,y,x] · x_pad[b,c,y+i,x+j]`` of a "same"
    depthwise conv (``groups = C``), for a bf16 ``grad`` and ``canvas``; returned in ``weight``'s dtype.

    oneDNN's depthwise weight gradient on CPU is several times slower in bf16 than in fp32, but
    its *grouped* conv weight gradient is fast (``git show 7df682e:benchmarks/results/kernels.md``). So the gradient of a
    conv with ``C / k`` groups of ``k`` channels (every channel against every channel of its
    block) is computed, and the depthwise gradient is its block diagonal
    ``dW[c] = dW_blocks[c, c mod k]``: ``k`` times the products, in bf16 with fp32 accumulation,
    rounded to bf16 like every autocast conv's weight gradient. With ``k = 8`` it beats even
    fp32's depthwise gradient on CPUs with native bf16 (``git show 7df682e:benchmarks/results/kernels.md``).
    Channel counts with no block of 8 or 4, and CPUs without native bf16 (where oneDNN's
    emulated bf16 grouped conv does not keep the error within one bf16 rounding: measured on a CPU
    without AVX512-BF16, ``tests/test_sparse_conv.py``), take the fp32 depthwise gradient.
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
    processes (``git show 7df682e:benchmarks/results/kernels.md``).
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
