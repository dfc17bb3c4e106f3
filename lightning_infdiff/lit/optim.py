"""Optimiser defaults and gradient clipping for fused optimisers.

PyTorch's fused AdamW does the whole update of every parameter in one kernel. On 2 CPU cores
its step takes 1.7 ms for the quickstart model (1.3 M parameters) against 10.6 ms for the
default per-tensor loop and 7.0 ms for ``foreach``, the same arithmetic
(``benchmarks/results/kernels.md``), so it is the default where it exists (CPU and CUDA).

Lightning's mixed-precision plugin refuses gradient clipping with any optimiser that unscales
gradients itself, which fused optimisers claim to do. That matters only with a float16
``GradScaler``: under ``bf16-mixed`` there is no loss scale, the gradients are already the true
ones, and clipping them before the step is exact. :func:`clip_gradients` does that, and
raises a clear error for the float16 case, where clipping before a fused step is impossible.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from lightning.pytorch.plugins.precision import Precision
from lightning.pytorch.utilities import GradClipAlgorithmType

__all__ = ["FUSED_DEVICES", "clip_gradients", "default_optimizer", "is_fused"]

#: Devices with a fused AdamW kernel that the toolkit uses by default.
FUSED_DEVICES = ("cpu", "cuda")


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` runs a fused kernel (``fused=True``)."""
    return bool(optimizer.defaults.get("fused"))


def default_optimizer(params: Iterable[torch.nn.Parameter], clip_with_scaler: bool = False) -> torch.optim.Optimizer:
    """AdamW, lr 2e-4, no weight decay; fused on CPU and CUDA.

    Args:
        params: the parameters to optimise.
        clip_with_scaler: gradients will be clipped under a float16 loss scaler, where a fused
            step cannot be combined with clipping: use the unfused update.
    """
    params = list(params)
    fused = not clip_with_scaler and bool(params) and all(p.device.type in FUSED_DEVICES for p in params)
    return torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, fused=fused or None)


def clip_gradients(
    plugin: Precision, optimizer: torch.optim.Optimizer, clip_val: float, algorithm: str | None
) -> bool:
    """Clip the gradients of a fused ``optimizer`` where that is exact; ``False`` if not fused.

    Args:
        plugin: the trainer's precision plugin.
        optimizer: the optimiser about to step.
        clip_val: ``trainer.gradient_clip_val``.
        algorithm: ``trainer.gradient_clip_algorithm`` (``"norm"`` or ``"value"``).

    Returns:
        ``True`` if the gradients were clipped here, ``False`` if ``optimizer`` is not fused
        (the caller then uses Lightning's own clipping).

    Raises:
        ValueError: a fused optimiser with clipping under a float16 loss scaler.
    """
    if not is_fused(optimizer) or not clip_val:
        return False
    if getattr(plugin, "scaler", None) is not None:
        raise ValueError(
            "model.optimizer is fused (init_args.fused: true) and trainer.gradient_clip_val is set, but "
            "precision '16-mixed' scales the loss and a fused optimiser unscales the gradients only inside its "
            "step, after clipping would have to happen; set model.optimizer.init_args.fused: false, remove "
            "trainer.gradient_clip_val, or use precision 'bf16-mixed'"
        )
    # no loss scale: clip exactly as Lightning does, without its mixed-precision plugin's refusal
    Precision.clip_gradients(plugin, optimizer, clip_val, GradClipAlgorithmType(algorithm or "norm"))
    return True
