"""Scaled dot-product attention that picks the faster kernel for short sequences on CPU.

``attention(q, k, v) = softmax(q kᵀ / √d + bias) v`` (Vaswani et al. 2017, eq. 1).

PyTorch's fused CPU kernel (``F.scaled_dot_product_attention``, a flash-attention variant)
tiles over the sequence, which pays off for long sequences but costs a lot of per-tile work on
the short ones the inner U-Nets and patch transformers here see (16 to 256 tokens). Measured
on a 2-core AMD EPYC with torch 2.13, forward and backward, ``(B, heads, L, d)``:

===================  ===========  ===========  ===========  ===========
shape                fused fp32   plain fp32   fused bf16   plain bf16
===================  ===========  ===========  ===========  ===========
(32, 2, 16, 32)      0.45 ms      0.25 ms      2.00 ms      0.38 ms
(32, 2, 64, 32)      1.78 ms      1.06 ms      4.93 ms      0.92 ms
(8, 4, 256, 64)      15.8 ms      15.0 ms      16.0 ms      9.6 ms
===================  ===========  ===========  ===========  ===========

(At 1024 tokens both take about the same time and the fused kernel needs far less memory.)

The fused kernel's cost is in its backward: without gradients (sampling) it is as fast or
faster (forward only, same machine: 0.04 vs 0.08 ms at (8, 2, 16, 32) bf16, 5.0 vs 12 ms at
(8, 4, 256, 64) bf16). So when gradients are recorded on CPU, sequences of up to
:data:`PLAIN_MAX_TOKENS` tokens use two matmuls and a softmax
(computed in fp32, so bf16 autocast does not round the weights before they are normalised),
and everything else (longer sequences, no gradients, other devices, where the fused kernels
are the fast ones) uses ``F.scaled_dot_product_attention``. Both compute the same function (see
``tests/test_attention.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PLAIN_MAX_TOKENS", "attention"]

#: Longest key sequence for which CPU attention uses the plain matmul-softmax-matmul form.
PLAIN_MAX_TOKENS = 256


def attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None) -> Tensor:
    """``softmax(q kᵀ / √d + bias) v`` over the last two dims of ``(..., L, d)`` tensors.

    Args:
        q: queries ``(..., Lq, d)``.
        k: keys ``(..., Lk, d)``.
        v: values ``(..., Lk, dv)``.
        bias: optional additive bias broadcastable to ``(..., Lq, Lk)`` (``-inf`` masks a key).

    Returns:
        ``(..., Lq, dv)`` in the dtype of ``q`` (``v``'s under autocast).
    """
    training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not training or q.device.type != "cpu" or k.shape[-2] > PLAIN_MAX_TOKENS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if bias is not None:
        scores = scores.float() + bias.float()
    weights = scores.softmax(-1, dtype=torch.float32)
    return torch.matmul(weights.to(v.dtype), v)
