"""Optimiser defaults and gradient clipping for fused optimisers.

PyTorch's fused AdamW does the whole update of every parameter in one kernel, the same
arithmetic several times faster than the per-tensor or ``foreach`` loops on CPU
(``git show 7df682e:benchmarks/results/kernels.md``), so it is the default where it exists (CPU and CUDA).

Lightning's mixed-precision plugin refuses gradient clipping with any optimiser that unscales
gradients itself, which fused optimisers claim to do. Under ``bf16-mixed`` and ``32-true`` there
is no loss scale: the gradients are the true ones and clipping them before the step is exact.
Under ``16-mixed`` (what :mod:`lightning_infdiff.precision` picks on a CUDA device without bf16)
:func:`clip_gradients` first unscales the gradients with the plugin's ``GradScaler``
(``unscale_``), which marks the optimiser as unscaled, so the scaler's fused step then skips its
own unscaling (``grad_scale`` is ``None``) and still skips steps with non-finite gradients.
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


def default_optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW, lr 2e-4, no weight decay; fused on CPU and CUDA (clipping works with it, see :func:`clip_gradients`)."""
    params = list(params)
    fused = bool(params) and all(p.device.type in FUSED_DEVICES for p in params)
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

    """
    if not is_fused(optimizer) or not clip_val:
        return False
    scaler = getattr(plugin, "scaler", None)
    if scaler is not None:
        scaler.unscale_(optimizer)  # true gradients now; the scaler's step will not unscale again
    # clip exactly as Lightning does, without its mixed-precision plugin's refusal
    Precision.clip_gradients(plugin, optimizer, clip_val, GradClipAlgorithmType(algorithm or "norm"))
    return True
