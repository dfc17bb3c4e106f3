"""The LightningDataModule: any image source served as fields with sampled coordinates."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L

from ..errors import UsageError
from .loader import BatchPlan, FieldCollate, FieldLoader, image_shape
from .sources import ImageSource, split_indices
from .subsample import CoordinateSampler, Strategy

__all__ = ["FieldDataModule"]


class FieldDataModule(L.LightningDataModule):
    """Serves an :class:`ImageSource` as :class:`~lightning_infdiff.batch.FieldBatch` batches.

    Training batches carry dense images ``(B, C, R, R)`` in ``[-1, 1]`` plus the flat indices
    ``(B, N)`` of the sampled pixels (∞-Diff, section 3.3: ``N = R^2 / rate``); validation and
    test batches carry full grids (``indices=None``) at ``resolution``. Every draw derives from
    ``seed``; ranks and workers see disjoint examples and different coordinates; the train
    loader is resumable from Lightning checkpoints (see :mod:`lightning_infdiff.data.loader`).

    Args:
        source: the image source (``ImageFolder``, ``MNISTDigits``, ``AnimalSilhouettes``,
            ``SkimagePhotos``, ``GaussianBlobs`` or your own :class:`ImageSource`).
        resolution: training and validation resolution in pixels: the side of square images, the
            shorter side with ``aspect``.
        train_resolutions: multi-resolution training: each training batch draws its resolution
            from this list (e.g. ``[16, 24, 32]``); validation stays at ``resolution``.
        batch_size: training batch size per process.
        val_batch_size: validation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes per rank.
        subsample_rate: keep ``floor(R^2 / rate)`` pixels per example (1 = full grid).
        num_points: fixed number of points per example instead of a rate.
        strategy: ``"uniform"`` (independent per example, the default), ``"shared"`` (one subset
            per batch), ``"sobol"`` or ``"halton"`` (quasi-Monte-Carlo, no duplicates).
        jitter: sub-pixel coordinate jitter of the training points (see
            :class:`~lightning_infdiff.data.subsample.CoordinateSampler`).
        val_subsample: subsample validation batches like training ones instead of full grids.
        hflip: random horizontal flips of training images.
        val_fraction: fraction of the source held out for validation.
        val_size: exact validation size (takes precedence over ``val_fraction``).
        split_seed: seed of the train/validation split (fixed independently of ``seed``).
        seed: seed of the order, crops, flips, resolutions and coordinates.
        pin_memory: pin batches in page-locked memory (CUDA only).
        aspect: width over height of the training and validation images (1: squares). Non-square
            images are windows with square pixels (a ``wide`` grid, :mod:`lightning_infdiff.coords`)
            rendered by the source's ``load_rect`` (a folder crops its files to that shape).
        train_aspects: multi-aspect training: each training batch draws its aspect from this list
            (e.g. ``[1, 1, 2]``: a third of the batches are 1:2 windows), so that the model learns what
            a wider view holds; validation stays at ``aspect``.
    """

    def __init__(
        self,
        source: ImageSource,
        resolution: int = 32,
        train_resolutions: list[int] | None = None,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        subsample_rate: int | None = 4,
        num_points: int | None = None,
        strategy: Strategy = "uniform",
        jitter: bool = False,
        val_subsample: bool = False,
        hflip: bool = False,
        val_fraction: float = 0.05,
        val_size: int | None = None,
        split_seed: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        aspect: float = 1.0,
        train_aspects: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.train_aspects = [float(a) for a in (train_aspects or [aspect])]
        if not aspect > 0 or not all(a > 0 for a in self.train_aspects):
            raise UsageError(f"data.aspect and data.train_aspects must be positive, got {aspect!r}, {train_aspects!r}")
        self.aspect = float(aspect)
        resolutions = list(train_resolutions) if train_resolutions else [resolution]
        for key, r in [("data.resolution", resolution), *(("data.train_resolutions", r) for r in resolutions)]:
            if int(r) != r or r < 2:
                raise UsageError(f"{key} must be an integer >= 2 (pixels per side), got {r!r}")
        for key, value in (("data.batch_size", batch_size), ("data.val_batch_size", val_batch_size)):
            if value is not None and (int(value) != value or value < 1):
                raise UsageError(f"{key} must be an integer >= 1, got {value!r}")
        if num_workers < 0:
            raise UsageError(f"data.num_workers must be >= 0, got {num_workers}")
        if val_size is not None and val_size < 0:
            raise UsageError(f"data.val_size must be >= 0 (or null to use data.val_fraction), got {val_size}")
        if val_size is None and not 0 <= val_fraction < 1:
            raise UsageError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
        self.source = source
        self.resolution = int(resolution)
        self.train_resolutions = [int(r) for r in resolutions]
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        try:  # fail before training: errors carry the numbers
            self.sampler = CoordinateSampler(subsample_rate, num_points, strategy, jitter)
            for r in self.train_resolutions:
                for a in self.train_aspects:
                    self.sampler.points_for(image_shape(r, a))
            if val_subsample:
                self.sampler.points_for(image_shape(self.resolution, self.aspect))
        except ValueError as err:
            key = "data.num_points" if num_points is not None else "data.subsample_rate"
            raise UsageError(f"{key}: {err}") from err
        self.val_subsample = val_subsample
        self.hflip = hflip
        self.val_fraction, self.val_size, self.split_seed = val_fraction, val_size, split_seed
        self.seed = seed
        self.pin_memory = pin_memory
        self.train_indices = self.val_indices = None
        self.save_hyperparameters(ignore=["source"])

    # ------------------------------------------------------------------ info
    @property
    def channels(self) -> int:
        """Image channels of the source."""
        return self.source.channels

    @property
    def num_classes(self) -> int | None:
        """Number of classes, or ``None`` for unlabelled sources."""
        return self.source.num_classes

    def check_model(self, denoiser: Any, process: Any) -> None:
        """Refuse a denoiser or process that does not fit this data (channels, classes, full grids)."""
        if self.channels != denoiser.in_channels:
            raise UsageError(
                f"model.denoiser.init_args.in_channels={denoiser.in_channels} but the data has {self.channels} "
                f"channel(s): set in_channels to {self.channels}"
            )
        if denoiser.num_classes and not self.num_classes:
            raise UsageError(f"model.denoiser.init_args.num_classes={denoiser.num_classes} but the data has no labels")
        if denoiser.num_classes and denoiser.num_classes != self.num_classes:
            raise UsageError(
                f"model.denoiser.init_args.num_classes={denoiser.num_classes} but the data has {self.num_classes} classes"
            )
        if getattr(process, "multiscale", False) and not self.sampler.is_full:
            raise UsageError(
                "model.process.init_args.multiscale=true needs full grids, but data.subsample_rate="
                f"{self.sampler.rate} / data.num_points={self.sampler.num_points} subsample them: set "
                "data.subsample_rate: 1 (configs/process/multiscale.yaml does) or disable multiscale"
            )

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str | None = None) -> None:
        """Check the source (files, sizes) and split it; runs on every process."""
        if self.train_indices is not None:
            return
        self.source.prepare(sorted({self.resolution, *self.train_resolutions}))
        try:
            self.train_indices, self.val_indices = split_indices(
                len(self.source), self.val_fraction, self.val_size, self.split_seed
            )
        except ValueError as err:
            raise UsageError(f"data.val_size / data.val_fraction: {err} ({type(self.source).__name__})") from err

    def _plan(self, train: bool) -> BatchPlan:
        self.setup()
        rank, world = self._rank_world()
        return BatchPlan(
            self.source,
            self.train_indices if train else self.val_indices,  # type: ignore[arg-type]
            self.batch_size if train else self.val_batch_size,
            self.train_resolutions if train else [self.resolution],
            train=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
            hflip=self.hflip,
            aspect=self.train_aspects if train else self.aspect,
        )

    def _trainer_epoch(self) -> int | None:
        trainer = self.trainer
        return None if trainer is None else int(trainer.fit_loop.epoch_progress.current.processed)

    def _trainer_progress(self) -> int | None:
        trainer = self.trainer
        return (
            None
            if trainer is None
            else int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        )

    def train_dataloader(self) -> FieldLoader:
        """Subsampled training batches (resumable, see :class:`FieldLoader`)."""
        return FieldLoader(
            self._plan(train=True),
            FieldCollate(self.sampler),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            epoch_fn=self._trainer_epoch,
            progress_fn=self._trainer_progress,
        )

    def val_dataloader(self) -> FieldLoader | list:
        """Full-grid validation batches at ``resolution`` (the same every epoch)."""
        if self.val_indices is not None and len(self.val_indices) == 0:
            return []
        collate = FieldCollate(self.sampler if self.val_subsample else None)
        return FieldLoader(self._plan(train=False), collate, self.num_workers, self.pin_memory)

    def test_dataloader(self) -> FieldLoader | list:
        """The validation batches."""
        return self.val_dataloader()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Seeds that define the data sequence (the position lives in the train loader's state)."""
        return {"seed": self.seed, "split_seed": self.split_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Warn when resuming with different seeds: the data sequence would not continue."""
        for key in ("seed", "split_seed"):
            if key in state_dict and state_dict[key] != getattr(self, key):
                warnings.warn(
                    f"FieldDataModule: the checkpoint was trained with {key}={state_dict[key]} but the "
                    f"DataModule has {key}={getattr(self, key)}: the data sequence will not continue exactly",
                    stacklevel=2,
                )
