"""Sample sheets during training: what the model draws at several grids, in TensorBoard and as PNG.

Sampling happens on the first validation batch (as :class:`~.fid.FIDCallback` does), so that an
:class:`~.ema.EMA` callback's weights, swapped in for validation, are the ones sampled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from ..errors import UsageError
from ..images import save_grid

__all__ = ["SampleGrids"]


class SampleGrids(L.Callback):
    """Draw one sheet of samples per grid every ``every_n_val`` validation runs (rank 0 only).

    Sheets go to TensorBoard (``samples/<H>x<W>``) and to ``<log_dir>/samples/step<step>_<H>x<W>.png``;
    sample ``i`` uses seed ``seed + i`` and, for a class-conditional model, label ``i mod classes``,
    with the module's sampler, steps and guidance (``model.sampling``).

    Args:
        every_n_val: draw every this many validation runs (0 = never).
        num_samples: samples per sheet.
        grids: grids ``[H, W]`` to sample at; default: the validation grid ``R x R``, twice it, and
            the wide ``R x 2R``.
        seed: seed of the first sample.
    """

    def __init__(
        self, every_n_val: int = 1, num_samples: int = 16, grids: list[list[int]] | None = None, seed: int = 0
    ) -> None:
        if every_n_val < 0:
            raise UsageError(f"samples.every_n_val must be >= 0, got {every_n_val}")
        if num_samples < 1:
            raise UsageError(f"samples.num_samples must be >= 1, got {num_samples}")
        for g in grids or []:
            if len(g) != 2 or min(g) < 2:
                raise UsageError(f"samples.grids entries must be [H, W] with H, W >= 2, got {g!r}")
        self.every_n_val, self.num_samples, self.seed = every_n_val, num_samples, seed
        self.grids = [(int(g[0]), int(g[1])) for g in grids] if grids else None
        self._runs = 0

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking:
            return
        due = self.every_n_val > 0 and self._runs % self.every_n_val == 0
        self._runs += 1
        if due and trainer.is_global_zero:
            self.draw(trainer, pl_module, tuple(batch.grid))

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, grid: tuple[int, int]) -> None:
        """One sheet per grid, logged and saved."""
        r_h, r_w = grid
        seeds = list(range(self.seed, self.seed + self.num_samples))
        labels = pl_module.denoiser.cycling_labels(len(seeds), pl_module.device)
        log_dir = getattr(trainer.logger, "log_dir", None) if trainer.logger is not None else None
        exp = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
        for g in self.grids or [(r_h, r_w), (2 * r_h, 2 * r_w), (r_h, 2 * r_w)]:
            x = pl_module.generate(g, seeds, labels=labels)
            if exp is not None and hasattr(exp, "add_image"):
                exp.add_image(f"samples/{g[0]}x{g[1]}", save_grid(x, None), trainer.global_step, dataformats="HWC")
            if log_dir is not None:
                save_grid(x, Path(log_dir) / "samples" / f"step{trainer.global_step:07d}_{g[0]}x{g[1]}.png")
