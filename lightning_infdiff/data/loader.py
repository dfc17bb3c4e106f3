"""Batch planning, collation into :class:`FieldBatch`, and the epoch-aware DataLoader.

The plan of an epoch is a pure function of ``(seed, epoch)``: a permutation of the split,
padded and dealt to ranks like ``DistributedSampler`` (rank ``r`` takes positions
``r, r + world, ...``), cut into batches, and batch ``b`` of the rank is built by worker
``b mod num_workers``. Every per-example draw (crop, flip, coordinates) is seeded by
``(seed, epoch, global position)``, so

* each rank and each worker sees different images and different coordinates;
* the batches do not depend on ``num_workers`` (PyTorch returns worker outputs in order);
* resuming at batch ``k`` of epoch ``e`` continues the exact same sequence.

Batches are assembled inside :class:`BatchPlan` (an ``IterableDataset`` that yields lists of
:class:`FieldSample`) and collated by :class:`FieldCollate`, which draws the coordinates.
One batch has one resolution, drawn per batch for multi-resolution training.
"""

from __future__ import annotations

import atexit
import math
import signal
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..batch import FieldBatch
from .seeding import (
    STREAM_ASPECT,
    STREAM_ITEM,
    STREAM_ORDER,
    STREAM_RES,
    STREAM_VAL,
    derive_seed,
    make_rng,
)
from .sources import ImageSource
from .subsample import CoordinateSampler

__all__ = ["FieldSample", "FieldCollate", "BatchPlan", "FieldLoader", "image_shape"]


@dataclass
class FieldSample:
    """One example before collation.

    Attributes:
        image: ``float32`` array ``(C, R, R)`` in ``[-1, 1]``.
        label: class label or ``None``.
        coord_seed: seed of this example's coordinates.
        batch_seed: seed shared by the batch (for the ``"shared"`` strategy).
    """

    image: np.ndarray
    label: int | None
    coord_seed: int
    batch_seed: int


class FieldCollate:
    """Collate :class:`FieldSample` lists into a :class:`FieldBatch` with sampled indices.

    Args:
        sampler: coordinate sampler, or ``None`` for full grids (``indices=None``).
    """

    def __init__(self, sampler: CoordinateSampler | None) -> None:
        self.sampler = sampler

    def __call__(self, samples: list[FieldSample]) -> FieldBatch:
        """Stack images and labels and draw the coordinates."""
        if not samples:
            raise ValueError("cannot collate an empty batch")
        shapes = {s.image.shape for s in samples}
        if len(shapes) != 1:
            raise ValueError(f"all examples of a batch must share one shape, got {sorted(shapes)}")
        image = torch.from_numpy(np.stack([s.image for s in samples])).float()
        labels = [s.label for s in samples]
        if any(lab is None for lab in labels):
            label = None
        else:
            label = torch.tensor(labels, dtype=torch.long)
        indices = offsets = None
        if self.sampler is not None:
            grid = (int(image.shape[-2]), int(image.shape[-1]))
            seeds = [s.coord_seed for s in samples]
            indices = self.sampler.sample(grid, seeds, samples[0].batch_seed)
            n = grid[0] * grid[1] if indices is None else int(indices.shape[1])
            offsets = self.sampler.offsets(n, seeds)
        return FieldBatch(image=image, indices=indices, label=label, offsets=offsets)


class BatchPlan(IterableDataset):
    """The batches one rank sees in one epoch (an ``IterableDataset`` of sample lists).

    Args:
        source: the image source.
        indices: the split (indices into ``source``).
        batch_size: examples per batch.
        resolutions: resolutions to draw from per batch (one entry: fixed resolution): the
            shorter side of the images.
        train: training plan (shuffled per epoch, ``drop_last``, random crops and flips) or
            validation plan (fixed order, last partial batch kept, fixed draws every epoch).
        seed: the one seed everything derives from.
        rank: this process's rank.
        world_size: number of processes.
        hflip: random horizontal flips (training only).
        aspect: width over height of the images (1: squares; e.g. 2: ``R x 2R`` windows with square
            pixels, rendered by the source's :meth:`~lightning_infdiff.data.sources.ImageSource.load_rect`),
            or a list to draw one per batch from (the same on every rank).
    """

    def __init__(
        self,
        source: ImageSource,
        indices: np.ndarray,
        batch_size: int,
        resolutions: list[int],
        train: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        hflip: bool = False,
        aspect: float | list[float] = 1.0,
    ) -> None:
        super().__init__()
        aspects = [float(a) for a in (aspect if isinstance(aspect, (list, tuple)) else [aspect])]
        if not aspects or not all(a > 0 for a in aspects):
            raise ValueError(f"aspect must be positive (or a list of positive values), got {aspect!r}")
        self.aspects = aspects
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.batch_size, self.resolutions, self.train = batch_size, list(resolutions), train
        self.seed, self.rank, self.world_size, self.hflip = seed, rank, world_size, hflip
        self.epoch = 0
        self.start_batch = 0
        self.per_rank = math.ceil(len(self.indices) / world_size)
        if train and self.per_rank < batch_size:
            raise ValueError(
                f"the training split has {len(self.indices)} examples, {self.per_rank} per rank: fewer "
                f"than one batch of {batch_size}"
            )

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.train:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """Dataset indices in global-position order for ``epoch`` (padded to ``world * per_rank``)."""
        n = len(self.indices)
        perm = (
            make_rng(self.seed, STREAM_ORDER, epoch).permutation(n) if self.train else np.arange(n)
        )
        total = self.per_rank * self.world_size
        if total > n:
            perm = np.concatenate([perm, perm[: total - n]])
        return self.indices[perm]

    def resolution(self, epoch: int, batch: int) -> int:
        """Resolution of local batch ``batch`` (the same on every rank)."""
        if len(self.resolutions) == 1:
            return self.resolutions[0]
        return int(make_rng(self.seed, STREAM_RES, epoch, batch).choice(self.resolutions))

    def aspect(self, epoch: int, batch: int) -> float:
        """Width over height of local batch ``batch`` (the same on every rank)."""
        if len(self.aspects) == 1:
            return self.aspects[0]
        return float(make_rng(self.seed, STREAM_ASPECT, epoch, batch).choice(self.aspects))

    def batch(self, epoch: int, b: int, order: np.ndarray | None = None) -> list[FieldSample]:
        """Load local batch ``b`` of ``epoch``."""
        order = self.order(epoch) if order is None else order
        res = self.resolution(epoch, b)
        h, w = image_shape(res, self.aspect(epoch, b))
        stop = min((b + 1) * self.batch_size, self.per_rank)
        global_batch = b * self.world_size + self.rank
        batch_seed = derive_seed(self.seed, STREAM_ITEM, epoch, global_batch, 1)
        samples = []
        for k in range(b * self.batch_size, stop):
            pos = k * self.world_size + self.rank
            index = int(order[pos])
            if self.train:
                item_seed = derive_seed(self.seed, STREAM_ITEM, epoch, pos)
            else:  # fixed across epochs and world sizes
                item_seed = derive_seed(self.seed, STREAM_VAL, index)
            rng = np.random.default_rng(item_seed)
            if h == w:
                image, label = self.source.load(index, res, rng, self.train)
            else:
                image, label = self.source.load_rect(index, (h, w), rng, self.train)
            if self.train and self.hflip and rng.random() < 0.5:
                image = np.ascontiguousarray(image[..., ::-1])
            samples.append(FieldSample(image, label, derive_seed(item_seed, 1), batch_seed))
        return samples

    def __iter__(self) -> Iterator[list[FieldSample]]:
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        order = self.order(self.epoch)
        for b in range(self.start_batch + wid, len(self), nw):
            yield self.batch(self.epoch, b, order)


def image_shape(resolution: int, aspect: float = 1.0) -> tuple[int, int]:
    """``(H, W)`` of images whose shorter side is ``resolution`` and whose width over height is ``aspect``."""
    if aspect >= 1.0:
        return resolution, max(resolution, round(resolution * aspect))
    return max(resolution, round(resolution / aspect)), resolution


def _pinned(batch: FieldBatch) -> FieldBatch:
    """Copy a batch's tensors to page-locked memory (faster ``non_blocking`` host-to-GPU copies)."""
    batch.image = batch.image.pin_memory()
    if batch.indices is not None:
        batch.indices = batch.indices.pin_memory()
    if batch.label is not None:
        batch.label = batch.label.pin_memory()
    if batch.offsets is not None:
        batch.offsets = batch.offsets.pin_memory()
    return batch


# Lightning warns that an IterableDataset with __len__ may repeat data across workers; BatchPlan
# deals each batch to one worker (``b mod num_workers``), so its length is exact. Not the user's to act on.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined", category=UserWarning)

#: signals a scheduler sends to every process of a job: ``timeout``, ``kill -- -PGID``, systemd and
#: SLURM send SIGTERM; SLURM's ``--signal=SIGUSR1@90`` (Lightning's requeue signal) sends SIGUSR1
JOB_SIGNALS: tuple[signal.Signals, ...] = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2") if hasattr(signal, name)
)


#: multi-process iterators still running; shut down at exit (see :func:`_shutdown_live_workers`)
_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register  # runs before multiprocessing's own exit handler, which joins the workers
def _shutdown_live_workers() -> None:
    """Ask the workers of every unfinished epoch to stop, and join them.

    A run that ends mid-epoch (SIGTERM, an exception) leaves the epoch's iterator referenced from
    the traceback; at exit ``multiprocessing`` would stop its workers with SIGTERM, which they
    ignore (:func:`ignore_job_signals`), and wait for them forever. Shut down the normal way
    instead: a stop message per worker, then join.
    """
    for it in list(_LIVE_ITERATORS):
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def ignore_job_signals(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: a worker ignores the job-wide signals.

    A signal sent to the whole process group would otherwise kill the workers first, and the
    training process would die on "DataLoader worker is killed by signal" before it could save
    ``last``. Ignored here, the signal reaches only the training process, which saves, exits and
    shuts its workers down; a worker whose parent died exits on its own (torch's watchdog).
    """
    for sig in JOB_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class FieldLoader(DataLoader):
    """A ``DataLoader`` over a :class:`BatchPlan` that knows its epoch and can resume mid-epoch.

    Each ``iter()`` starts an epoch: the epoch comes from ``epoch_fn`` (the DataModule passes
    the trainer's epoch) or, without one, from an internal counter (see :meth:`set_epoch`).
    It implements ``state_dict``/``load_state_dict``, so Lightning stores it in checkpoints
    and resumes at the next unseen batch. Workers are not persistent: the plan is re-sent to
    them every epoch. Workers ignore the signals a scheduler sends to the whole job
    (:func:`ignore_job_signals`), so that the training process can checkpoint on them.

    Args:
        plan: the batch plan.
        collate: the collate function.
        num_workers: worker processes.
        pin_memory: pin batches in page-locked memory (only when CUDA is available).
        epoch_fn: returns the current epoch, or ``None`` to fall back to the counter.
        progress_fn: returns how many batches of the current epoch the consumer has finished
            (used by :meth:`state_dict`); defaults to the number of batches yielded.
    """

    def __init__(
        self,
        plan: BatchPlan,
        collate: FieldCollate,
        num_workers: int = 0,
        pin_memory: bool = False,
        epoch_fn: Callable[[], int | None] | None = None,
        progress_fn: Callable[[], int | None] | None = None,
    ) -> None:
        # torch's pin-memory thread leaves unknown dataclasses unpinned (FieldBatch has no
        # ``pin_memory`` method), so batches are pinned here, in the main process.
        super().__init__(plan, batch_size=None, collate_fn=collate, num_workers=num_workers,
                         worker_init_fn=ignore_job_signals if num_workers > 0 else None)
        self.pin = bool(pin_memory) and torch.cuda.is_available()
        self.epoch_fn, self.progress_fn = epoch_fn, progress_fn
        self._next_epoch = 0
        self._current_epoch = 0
        self._yielded = 0
        self._resume: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` run ``epoch`` (when no ``epoch_fn`` is given)."""
        self._next_epoch = int(epoch)

    def __iter__(self) -> Iterator[FieldBatch]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        if epoch is None:
            epoch = self._next_epoch
        self._next_epoch = epoch + 1
        plan: BatchPlan = self.dataset  # type: ignore[assignment]
        plan.epoch, plan.start_batch = epoch, 0
        if self._resume is not None and self._resume[0] == epoch:
            plan.start_batch = min(self._resume[1], len(plan))
        self._resume = None
        self._current_epoch, self._yielded = epoch, plan.start_batch
        it = super().__iter__()
        if self.num_workers > 0:
            _LIVE_ITERATORS.add(it)
        try:
            for batch in it:
                self._yielded += 1
                yield _pinned(batch) if self.pin else batch
        finally:  # also when the consumer stops mid-epoch and closes this generator
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the epoch in progress and the batches consumed from it."""
        done = self.progress_fn() if self.progress_fn is not None else None
        return {
            "epoch": self._current_epoch,
            "batches": self._yielded if done is None else int(done),
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Resume: the next ``iter()`` of the same epoch skips the consumed batches."""
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]))
