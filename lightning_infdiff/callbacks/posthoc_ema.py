"""Power-function EMAs of the denoiser with snapshots, for post-hoc EMA (EDM2, section 3)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ..files import atomic_write_bytes
from ..posthoc import SNAPSHOT_FORMAT, check_sigma_rel, gamma_from_sigma_rel, power_beta

__all__ = ["PostHocEMA"]


class PostHocEMA(L.Callback):
    """Track power-function EMAs of ``pl_module.denoiser`` and store snapshots of them, so that an
    average of any length can be rebuilt after training (``infdiff posthoc_ema``).

    After optimiser step ``t`` (``trainer.global_step``) each average is updated as

        ema_t = beta_t ema_{t-1} + (1 - beta_t) theta_t,   beta_t = (1 - 1/t) ** (gamma + 1),

    with ``gamma`` set by ``sigma_rel``, the average's width relative to the run's length
    (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
    section 3 and appendix C; the maths is in :mod:`lightning_infdiff.posthoc`). Every
    ``snapshot_every`` steps and at the end of fit each average is written to
    ``<folder>/sigma<sigma_rel>_step<step>.safetensors`` (atomically; its metadata holds the step
    and ``sigma_rel``); :func:`lightning_infdiff.posthoc.reconstruct` combines them into the
    average of any other ``sigma_rel``. It sits beside :class:`~lightning_infdiff.callbacks.EMA`,
    which still decides the weights of validation and of the checkpoint.

    The averages are kept in fp32 on the parameters' device (one copy of the denoiser per
    ``sigma_rel``) over its parameters and persistent buffers (integer buffers are copied, not
    averaged). They, the step and the folder go into the checkpoint, so a resumed run continues
    them exactly and keeps writing into the first run's folder. Under DDP every rank updates
    (the weights agree) and rank 0 writes.

    Args:
        sigma_rels: the averages to track (EDM2: 0.05 and 0.10); each in ``(0, 0.2887]``.
        snapshot_every: optimiser steps between snapshots.
        folder: snapshot folder; default ``<log_dir>/posthoc_ema``.
    """

    def __init__(
        self, sigma_rels: Sequence[float] = (0.05, 0.10), snapshot_every: int = 1000, folder: str | None = None,
    ) -> None:
        if isinstance(sigma_rels, (int, float)) or len(sigma_rels) == 0:
            raise ValueError(f"PostHocEMA sigma_rels must be a non-empty list such as [0.05, 0.10], got {sigma_rels!r}")
        self.sigma_rels = tuple(check_sigma_rel(s, "PostHocEMA sigma_rels") for s in sigma_rels)
        if len(set(self.sigma_rels)) != len(self.sigma_rels):
            raise ValueError(f"PostHocEMA sigma_rels must be distinct, got {list(sigma_rels)}")
        if not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(f"PostHocEMA snapshot_every must be an integer >= 1, got {snapshot_every!r}")
        self.gammas = tuple(gamma_from_sigma_rel(s) for s in self.sigma_rels)
        self.snapshot_every = snapshot_every
        self.folder = folder
        #: optimiser step of the last update (0: none yet) and of the last snapshot written
        self.step = 0
        self.snapshot_step = 0
        #: one ``{name: tensor}`` per sigma_rel, in the denoiser's ``state_dict`` order
        self.emas: list[dict[str, Tensor]] | None = None
        self._dir: Path | None = None
        self._loaded_dir: Path | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(sigma_rels=list(self.sigma_rels))

    @staticmethod
    def _denoiser_state(pl_module: L.LightningModule) -> dict[str, Tensor]:
        denoiser = getattr(pl_module, "denoiser", None)
        if not isinstance(denoiser, torch.nn.Module):
            raise ValueError(f"PostHocEMA: {type(pl_module).__name__} has no `denoiser` module to average")
        return denoiser.state_dict()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resolve the snapshot folder on every rank (``trainer.log_dir`` is a collective call)."""
        if stage == "fit":
            self._dir = Path(self.folder) if self.folder else Path(trainer.log_dir or trainer.default_root_dir) / "posthoc_ema"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the averages from the current weights, or move restored ones to the weights' device."""
        current = self._denoiser_state(pl_module)
        if self.emas is None:
            if trainer.global_step > 0:
                rank_zero_warn(
                    f"PostHocEMA starts at step {trainer.global_step} without its state in the checkpoint: its "
                    "averages begin at the current weights, so their profiles (and reconstructions) are approximate"
                )
            self.emas = [{k: self._fresh(v) for k, v in current.items()} for _ in self.sigma_rels]
            self.step = self.snapshot_step = int(trainer.global_step)
        else:
            for ema in self.emas:
                if ema.keys() != current.keys():
                    missing = sorted(current.keys() - ema.keys())[:5]
                    raise ValueError(f"PostHocEMA: the checkpoint's averages do not match the denoiser (missing {missing})")
                for k, v in current.items():
                    ema[k] = ema[k].to(v.device)
        if self.folder is None and self._loaded_dir is not None and self._loaded_dir.is_dir():
            self._dir = self._loaded_dir  # a resumed run keeps all snapshots of the run in one folder

    @staticmethod
    def _fresh(value: Tensor) -> Tensor:
        return value.detach().to(torch.float32 if value.is_floating_point() else value.dtype, copy=True)

    @torch.no_grad()
    def update(self, current: dict[str, Tensor], step: int) -> None:
        """Fold the weights after optimiser step ``step`` into every average."""
        assert self.emas is not None
        for gamma, ema in zip(self.gammas, self.emas, strict=True):
            weight = 1.0 - power_beta(step, gamma)
            avgs, news = [], []
            for name, value in current.items():
                avg = ema[name]
                if avg.is_floating_point():
                    avgs.append(avg)
                    news.append(value if value.dtype == avg.dtype else value.to(avg.dtype))
                else:
                    avg.copy_(value)
            if avgs:
                torch._foreach_lerp_(avgs, news, weight)  # avg + weight (new - avg), fused
        self.step = step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
    ) -> None:
        step = int(trainer.global_step)
        if self.emas is None or step <= self.step:  # gradient accumulation: no optimiser step this batch
            return
        self.update(self._denoiser_state(pl_module), step)
        if step % self.snapshot_every == 0:
            self.save_snapshots(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.emas is not None and self.step > self.snapshot_step:
            self.save_snapshots(trainer)

    def save_snapshots(self, trainer: L.Trainer) -> list[Path]:
        """Write every average at the current step (rank 0; the others return ``[]``)."""
        from safetensors.torch import save

        self.snapshot_step = self.step
        if not trainer.is_global_zero or self.emas is None:
            return []
        folder = self._dir or Path(self.folder or Path(trainer.default_root_dir) / "posthoc_ema")
        written = []
        for sigma, gamma, ema in zip(self.sigma_rels, self.gammas, self.emas, strict=True):
            tensors = {k: v.detach().cpu().contiguous() for k, v in ema.items()}
            meta = {"format": SNAPSHOT_FORMAT, "step": str(self.step), "sigma_rel": repr(sigma), "gamma": repr(gamma)}
            path = folder / f"sigma{sigma:g}_step{self.step:09d}.safetensors"
            written.append(atomic_write_bytes(save(tensors, metadata=meta), path, "post-hoc EMA snapshot"))
        return written

    def state_dict(self) -> dict[str, Any]:
        return {
            "sigma_rels": list(self.sigma_rels), "step": self.step, "snapshot_step": self.snapshot_step,
            "folder": str(self._dir) if self._dir is not None else None, "emas": self.emas,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if [float(s) for s in state_dict["sigma_rels"]] != list(self.sigma_rels):
            raise ValueError(f"PostHocEMA: the checkpoint tracked sigma_rels {state_dict['sigma_rels']}, "
                             f"this run asks for {list(self.sigma_rels)}")
        self.step = int(state_dict["step"])
        self.snapshot_step = int(state_dict["snapshot_step"])
        emas = state_dict["emas"]
        self.emas = None if emas is None else [{k: v.clone() for k, v in ema.items()} for ema in emas]
        self._loaded_dir = Path(state_dict["folder"]) if state_dict.get("folder") else None
