"""FID during training: sample, quantise, compare with cached reference statistics, log.

At the first validation batch of a due validation run (every ``every_n_steps`` optimiser steps
and/or every ``every_n_epochs`` epochs), the callback draws ``num_samples`` images at each
configured resolution (including ones above the training resolution) with
:meth:`DiffusionModule.generate` (per-sample seeds; mollified samples Wiener-deblurred), quantises
them to uint8 as saved PNGs would be, and logs the Fréchet distance of every configured
extractor against reference statistics of the DataModule's training split rendered at that
resolution (the FID_CLIP protocol of Kynkäänniemi et al. 2023 as ∞-Diff applies it):
``fid_clip/<H>x<W>``, ``fid_offline/<H>x<W>``, ``fid_inception/<H>x<W>``.

Distributed: rank ``r`` of ``W`` draws seeds ``seed + r, seed + r + W, ...``, so the set of
samples does not depend on the number of processes; torchmetrics all-reduces the feature sums.
Reference statistics are computed by rank 0 (cached on disk) and loaded by the other ranks.

EMA: sampling runs inside a validation hook (``on_validation_batch_end`` of batch 0), after every
callback's ``on_validation_epoch_start``, so an EMA callback's averaged weights are in place
whatever the order of the callbacks. A run without validation batches logs no FID.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch

from ..coords import Grid
from ..metrics.features import FeatureExtractor, quantise
from ..metrics.frechet import FrechetDistance
from ..metrics.reference import Split, reference_stats
from ..precision import inference_autocast

__all__ = ["FIDCallback", "sample_into"]


@torch.no_grad()
def sample_into(
    module: L.LightningModule,
    grid: tuple[int, int],
    seeds: list[int],
    metrics: list[FrechetDistance],
    batch_size: int,
    sampler: str | None = None,
    steps: int | None = None,
    precision: str = "auto",
    first_seed: int = 0,
    progress: bool = False,
) -> None:
    """Reset ``metrics``, then generate one sample per seed on ``grid`` (batch by batch),
    quantise to uint8 and feed every metric as the generated side.

    Conditional models get label ``(seed - first_seed) % num_classes`` (a balanced cycle). The
    network runs under :func:`~lightning_infdiff.precision.inference_autocast` with ``precision``
    (``auto``: the hardware rule; or ``32``, ``bf16``, ``16``, or a trainer's precision name).
    """
    from tqdm.auto import tqdm

    num_classes = getattr(module.denoiser, "num_classes", None)
    device = module.device
    for m in metrics:
        m.reset()
    starts = range(0, len(seeds), batch_size)
    for start in tqdm(starts, desc=f"FID samples {grid[0]}x{grid[1]}", disable=not progress):
        chunk = seeds[start : start + batch_size]
        labels = None
        if num_classes:
            labels = (torch.tensor(chunk, device=device) - first_seed) % num_classes
        with inference_autocast(device, precision):
            x = module.generate(grid, chunk, sampler, steps, labels=labels)
        images = quantise(x).to(device)
        for m in metrics:
            m.update(images, real=False)


class FIDCallback(L.Callback):
    """Log Fréchet distances of generated samples during validation.

    Args:
        extractors: feature extractors, e.g. ``ClassifierFeatures`` (offline), ``CLIPFeatures``.
        resolutions: grids ``[H, W]`` to sample and evaluate at (default: the data resolution).
        num_samples: generated images per resolution (over all ranks).
        every_n_steps: evaluate at the first validation after every this many optimiser steps.
        every_n_epochs: evaluate at the first validation of every this many epochs. With
            neither set, every validation run evaluates.
        sampler: sampler for the FID samples (default: the module's).
        steps: solver steps (default: the module's).
        batch_size: samples per ``generate`` call.
        seed: first sample seed.
        reference_split: ``train`` (the protocol), ``val`` or ``all``.
        reference_count: number of real images (default: the whole split).
        cache: reference-statistics cache root (default ``$LIGHTNING_INFDIFF_CACHE``).
        precision: the denoiser's precision while sampling: ``trainer`` (the trainer's, itself chosen by
            the hardware unless set), ``auto`` (the hardware rule), ``32``, ``bf16`` or ``16`` (CUDA).
    """

    def __init__(
        self,
        extractors: list[FeatureExtractor],
        resolutions: list[list[int]] | None = None,
        num_samples: int = 256,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        sampler: Literal["ddpm", "ddim", "dpmpp_2m", "euler", "heun", "dpmpp_3m"] | None = None,
        steps: int | None = None,
        batch_size: int = 64,
        seed: int = 1_000_000,
        reference_split: Split = "train",
        reference_count: int | None = None,
        cache: str | None = None,
        precision: Literal["trainer", "auto", "32", "bf16", "16"] = "trainer",
    ) -> None:
        if not extractors:
            raise ValueError("FIDCallback.extractors must list at least one feature extractor")
        checks = {"num_samples": num_samples >= 2, "batch_size": batch_size >= 1,
                  "every_n_steps": every_n_steps is None or every_n_steps >= 1,
                  "every_n_epochs": every_n_epochs is None or every_n_epochs >= 1}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid FIDCallback.{bad[0]}={locals()[bad[0]]!r}")
        for g in resolutions or []:
            if len(g) != 2 or min(g) < 2:
                raise ValueError(f"FIDCallback.resolutions entries must be [H, W] with H, W >= 2, got {g!r}")
        self.extractors = list(extractors)
        # non-square grids are wider views (square pixels), for the samples and the references alike
        self.resolutions = [Grid(int(g[0]), int(g[1]), "wide") for g in resolutions] if resolutions else None
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.every_n_steps, self.every_n_epochs = every_n_steps, every_n_epochs
        self.sampler, self.steps, self.precision = sampler, steps, precision
        self.reference_split, self.reference_count, self.cache = reference_split, reference_count, cache
        self.metrics: dict[tuple[str, tuple[int, int]], FrechetDistance] = {}
        self.last: dict[str, float] = {}
        self._last_step_bucket: int | None = None
        self._last_epoch: int | None = None

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Reference statistics (rank 0 computes and caches, the others load) and the metrics."""
        if stage not in ("fit", "validate") or self.metrics:
            return
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "source"):
            raise ValueError("FIDCallback needs a FieldDataModule (its source gives the reference images)")
        dm.setup(stage)
        grids = self.resolutions or [(dm.resolution, dm.resolution)]
        names = [e.metric for e in self.extractors]
        if len(set(names)) != len(names):
            raise ValueError(f"FIDCallback: two extractors log under the same name: {names}")
        device = pl_module.device

        def load_all() -> dict[tuple[str, tuple[int, int]], Any]:
            return {
                (e.metric, g): reference_stats(
                    dm, e.to(device), g, self.reference_split, self.reference_count, self.batch_size,
                    self.cache, progress=trainer.is_global_zero, device=device,
                )
                for e in self.extractors for g in grids
            }

        if trainer.world_size > 1 and self.cache != "":
            if trainer.is_global_zero:
                refs = load_all()
            trainer.strategy.barrier("fid_reference")
            if not trainer.is_global_zero:
                refs = load_all()
        else:
            refs = load_all()
        for e in self.extractors:
            for g in grids:
                self.metrics[(e.metric, g)] = FrechetDistance(e, reference=refs[(e.metric, g)]).to(device)

    # ------------------------------------------------------------------ schedule
    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn == "validate":
            return True
        due = self.every_n_steps is None and self.every_n_epochs is None
        if self.every_n_steps is not None:
            bucket = trainer.global_step // self.every_n_steps
            due |= bucket > (self._last_step_bucket or 0)
        if self.every_n_epochs is not None:
            epoch = trainer.current_epoch
            due |= (epoch + 1) % self.every_n_epochs == 0 and epoch != self._last_epoch
        return due

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Evaluate on the first validation batch of a due run (EMA weights are in place)."""
        if batch_idx != 0 or dataloader_idx != 0 or not self._due(trainer):
            return
        if self.every_n_steps is not None:
            self._last_step_bucket = trainer.global_step // self.every_n_steps
        self._last_epoch = trainer.current_epoch
        precision = str(trainer.precision) if self.precision == "trainer" else self.precision
        values = self.evaluate(pl_module, trainer.global_rank, trainer.world_size, precision)
        for key, value in values.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True, batch_size=1)

    # ------------------------------------------------------------------ work
    @torch.no_grad()
    def evaluate(self, pl_module: L.LightningModule, rank: int = 0, world_size: int = 1,
                 precision: str | None = None) -> dict[str, float]:
        """Sample this rank's share at every resolution and return ``{"<metric>/<H>x<W>": value}``.

        ``precision`` overrides the callback's (the validation hook passes the trainer's).
        """
        if precision is None:
            precision = "auto" if self.precision == "trainer" else self.precision
        seeds = [self.seed + i for i in range(rank, self.num_samples, world_size)]
        grids = sorted({g for _, g in self.metrics}, key=lambda g: (g[0] * g[1], g))
        values: dict[str, float] = {}
        for g in grids:
            metrics = {name: m for (name, grid), m in self.metrics.items() if grid == g}
            sample_into(pl_module, g, seeds, list(metrics.values()), self.batch_size, self.sampler, self.steps,
                        precision, self.seed)
            for name, m in metrics.items():
                values[f"{name}/{g[0]}x{g[1]}"] = float(m.compute())
                m.reset()
        self.last = dict(values)
        return values

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """When FID was last computed (so a resumed run keeps the schedule)."""
        return {"last_step_bucket": self._last_step_bucket, "last_epoch": self._last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self._last_step_bucket = state_dict.get("last_step_bucket")
        self._last_epoch = state_dict.get("last_epoch")
