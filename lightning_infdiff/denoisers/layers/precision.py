"""Where the denoisers leave autocast: the conditioning path in fp32, and autocast's dtype.

:func:`in_param_dtype` runs a small layer in its parameters' dtype whatever autocast says (the
noise-embedding MLP, FiLM projections, a point model's few-channel lift and output);
:func:`autocast_dtype` tells which dtype autocast runs matmuls in on a tensor's device.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["autocast_dtype", "in_param_dtype"]


def in_param_dtype(layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)`` in the dtype of ``layer``'s parameters, whatever autocast says.

    For the conditioning path: the noise-embedding MLP and the FiLM projections act on one row
    per example (``(B, E)``). Those matmuls are far too small for bf16 to pay: on CPU autocast made
    them slower than fp32, besides casting their
    weights every step, and fp32 keeps the scale and shift of every block exact to fp32.
    The same holds for projections from or to the data's few channels (a point model's lift
    ``C_in -> C`` and output ``C -> C_out``): their weight gradients are matrix-vector
    products, slower under bf16 autocast than in fp32 (``git show 7df682e:benchmarks/results/kernels.md``).
    """
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.to(next(layer.parameters()).dtype))


def autocast_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast runs matmuls in on ``x``'s device, or ``x.dtype`` when autocast is off."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
