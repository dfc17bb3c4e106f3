"""``torch.compile`` of the denoiser, as a callback (no change to the module or its checkpoints).

The denoiser is compiled in place with ``nn.Module.compile``: its ``forward`` runs through
``torch.compile`` while its parameters, buffers and ``state_dict`` keys stay the same, so
checkpoints written with and without compilation are interchangeable and EMA / safetensors
export see the plain module. Only the network is compiled; the process maths (schedules, DCT,
samplers) stays in eager fp32. The number of points and the grid change between training
(subsampled), validation (full grid) and sampling (any grid): with the default
``dynamic=None`` torch compiles the first shape statically and switches to dynamic shapes when
a shape changes. (``dynamic=True`` from the start made inductor fail on the sparse neural
operator with torch 2.13: ``cannot determine truth value of Relational``.)

On CPU the ``inductor`` backend needs a C++ compiler and compiled the tiny test model for about
5 minutes on the shared 2-core machine: the tests check the wiring with the ``eager`` backend
(same numerics as no compilation); the speed-up is a GPU matter.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch

__all__ = ["CompileDenoiser"]


class CompileDenoiser(L.Callback):
    """Compile ``pl_module.denoiser`` with ``torch.compile`` when fitting (or validating, testing, predicting) starts.

    Args:
        backend: ``torch.compile`` backend (``inductor``; ``eager``/``aot_eager`` for debugging).
        mode: ``None``, ``default``, ``reduce-overhead`` or ``max-autotune``.
        dynamic: ``None`` (static first, dynamic after a shape change), ``True`` or ``False``.
        fullgraph: require one graph (raise on graph breaks).
    """

    def __init__(
        self,
        backend: str = "inductor",
        mode: Literal["default", "reduce-overhead", "max-autotune"] | None = None,
        dynamic: bool | None = None,
        fullgraph: bool = False,
    ) -> None:
        if not backend:
            raise ValueError("CompileDenoiser: backend must be a torch.compile backend name, e.g. 'inductor'")
        self.backend, self.mode, self.dynamic, self.fullgraph = backend, mode, dynamic, fullgraph

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Compile the denoiser in place (once)."""
        denoiser = getattr(pl_module, "denoiser", None)
        if not isinstance(denoiser, torch.nn.Module):
            raise ValueError(f"CompileDenoiser: {type(pl_module).__name__} has no `denoiser` module to compile")
        if getattr(denoiser, "_compiled_call_impl", None) is not None:
            return
        denoiser.compile(backend=self.backend, mode=self.mode, dynamic=self.dynamic, fullgraph=self.fullgraph)
