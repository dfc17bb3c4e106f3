"""Callbacks the multi-node test injects into `python -m lightning_infdiff fit` (``--trainer.callbacks+=``).

The production module draws a batch's noise from the (per-rank) global RNG, so a split of the
global batch over ranks changes the draws; for the comparison with one process, these callbacks
make each example's noise level and noise depend on the example alone, and record per rank.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import lightning as L
import torch


class PerExampleNoise(L.Callback):
    """Training noise seeded by each example's pixels and the step: independent of the split."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        process, original = pl_module.process, pl_module.process.loss

        def loss(denoiser, x0, indices=None, cond=None, logsnr=None, generator=None, noise=None, grid=None,
                 offsets=None):
            if logsnr is None and noise is None:
                levels, noises = [], []
                for img in x0:
                    seed = zlib.crc32(img.detach().cpu().numpy().tobytes()) + 1_000_003 * pl_module.global_step
                    gen = torch.Generator().manual_seed(seed)
                    levels.append(process.sample_logsnr(1, grid, generator=gen))
                    noises.append(torch.randn(img.shape, generator=gen))
                logsnr, noise = torch.cat(levels).to(x0.device), torch.stack(noises)
            return original(denoiser, x0, indices, cond, logsnr, generator, noise, grid, offsets)

        process.loss = loss


class RecordRank(L.Callback):
    """Writes ``rank<r>.json`` (losses, world size, node rank) and ``rank<r>.pt`` (weights).

    Args:
        out: folder to write into.
    """

    def __init__(self, out: str) -> None:
        self.out, self.losses = Path(out), []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        (self.out / f"rank{rank}.json").write_text(json.dumps({
            "losses": self.losses, "world_size": trainer.world_size, "node_rank": trainer.node_rank,
            "num_nodes": trainer.num_nodes}))
        torch.save({k: v.cpu() for k, v in pl_module.state_dict().items()}, self.out / f"rank{rank}.pt")
