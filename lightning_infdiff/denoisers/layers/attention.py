"""Scaled dot-product attention that picks the faster kernel for short sequences on CPU.

``attention(q, k, v) = softmax(q kᵀ / √d + bias) v`` (Vaswani et al. 2017, eq. 1).

PyTorch's fused CPU kernel (``F.scaled_dot_product_attention``, a flash-attention variant)
tiles over the sequence, which pays off for long sequences but costs a lot of per-tile work on
the short ones the inner U-Nets and patch transformers here see (16 to 256 tokens): with
gradients, two matmuls and a softmax are faster there, up to about 5x in bf16; at 1024 tokens
both take about the same time and the fused kernel needs far less memory
(``git show 7df682e:benchmarks/results/kernels_attention_epyc.md``).

The fused kernel's cost is in its backward: without gradients (sampling) it is as fast or
faster. So when gradients are recorded on CPU, sequences of up to
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
