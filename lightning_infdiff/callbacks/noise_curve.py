"""The validation loss against the noise level, one line of JSON per validation run.

The module logs the loss at ``K`` fixed noise levels as ``val_loss_by_logsnr/binKK`` (averaged
over the validation set and the ranks); this callback writes the curve with each bin's logSNR to
``<log_dir>/val_loss_by_logsnr.jsonl``, which ``infdiff report`` plots across runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L

__all__ = ["NoiseLevelCurve", "PREFIX"]

#: metric-name prefix of the per-bin validation losses
PREFIX = "val_loss_by_logsnr/bin"


class NoiseLevelCurve(L.Callback):
    """Append ``{"step": s, "curve": [{"logsnr": l, "loss": v}, ...]}`` after each validation run."""

    def __init__(self) -> None:
        self._grid: tuple[int, int] | None = None

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx == 0:
            self._grid = tuple(batch.grid)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self._grid is None:
            return
        log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
        bins = sorted(k for k in trainer.callback_metrics if k.startswith(PREFIX))
        if log_dir is None or not bins:
            return
        levels = pl_module.val_levels(self._grid)
        curve = [{"logsnr": float(levels[int(k[len(PREFIX):])]), "loss": float(trainer.callback_metrics[k])}
                 for k in bins]
        path = Path(log_dir) / "val_loss_by_logsnr.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"step": int(trainer.global_step), "curve": curve}) + "\n")
