"""Training cost measured where it happens: step time, peak memory and sampling time per image.

The ablation report (:mod:`lightning_infdiff.report`) compares runs by quality *and* cost, as
∞-Diff's table 3 does for subsampling (speed-up per rate) and its appendix tables 4-5 for
memory. This callback measures, inside the training process:

* the median wall time of a training step (``on_train_batch_start`` to ``on_train_batch_end``:
  forward, backward and optimiser step, without data loading), skipping the first
  ``skip_steps`` steps (allocator warm-up, lazy initialisation);
* training memory: on CPU the process's resident-set high-water mark
  (``getrusage(RUSAGE_SELF).ru_maxrss``, imports and data included) read after the last training
  step before the first validation, so validation sampling on larger grids does not count (a
  sanity-check validation before training does: set ``num_sanity_val_steps: 0``, as base.yaml
  does); on CUDA the largest ``torch.cuda.max_memory_allocated`` within a training step. The
  whole run's RSS high-water mark is recorded too;
* the sampling time per image: ``DiffusionModule.generate`` timed for ``sample_num`` images on
  one grid with ``sample_steps`` solver steps after training ends;
* the wall time of training (``on_train_start`` to ``on_train_end``) and, within it, of the
  validation runs (loss and sample grids), so the share of a wall-time budget that validation
  takes is known.

It writes ``throughput.json`` into the logger's directory (next to ``val_loss_by_logsnr.jsonl``)
and logs the numbers as ``throughput/*`` scalars.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["Throughput", "peak_rss_mib"]


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput(Callback):
    """Measure median step time, peak memory and sampling time per image; write ``throughput.json``.

    Args:
        skip_steps: first training steps left out of the median (used anyway if the run has
            no more steps than this).
        sample_num: images to draw after training to time sampling (0 = do not time sampling).
        sample_steps: solver steps for the timed sampling.
        sample_grid: ``[H, W]`` to sample at; default: the data module's ``resolution`` square.
        filename: name of the JSON file written in the logger's directory.
    """

    def __init__(
        self,
        skip_steps: int = 5,
        sample_num: int = 4,
        sample_steps: int = 25,
        sample_grid: list[int] | None = None,
        filename: str = "throughput.json",
    ) -> None:
        if skip_steps < 0 or sample_num < 0 or sample_steps < 1:
            raise ValueError(
                f"Throughput: skip_steps and sample_num must be >= 0 and sample_steps >= 1, "
                f"got {skip_steps}, {sample_num}, {sample_steps}"
            )
        if sample_grid is not None and (len(sample_grid) != 2 or min(sample_grid) < 2):
            raise ValueError(f"Throughput: sample_grid must be [H, W] with sides >= 2, got {sample_grid!r}")
        self.skip_steps, self.sample_num, self.sample_steps = skip_steps, sample_num, sample_steps
        self.sample_grid = sample_grid
        self.filename = filename
        self.step_times: list[float] = []
        self._t0: float | None = None
        self._validated = False
        self._rss_train: float | None = None
        self._cuda_train: float | None = None
        self._train_start: float | None = None
        self._train_seconds: float | None = None
        self._val_start: float | None = None
        self.validation_seconds: list[float] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Reset the measurements."""
        self.step_times.clear()
        self.validation_seconds.clear()
        self._validated, self._rss_train, self._cuda_train = False, None, None
        self._train_start = self._train_seconds = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start the training wall clock."""
        self._train_start = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Stop reading the training RSS high-water mark (validation samples on larger grids)."""
        if not trainer.sanity_checking and self._rss_train is not None:
            self._validated = True
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            _sync(pl_module.device)
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Add the validation run's wall time."""
        if self._val_start is not None:
            _sync(pl_module.device)
            self.validation_seconds.append(time.perf_counter() - self._val_start)
            self._val_start = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        """Start the step clock."""
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        _sync(pl_module.device)
        self._t0 = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Stop the step clock (after backward and the optimiser step)."""
        if self._t0 is None:
            return
        _sync(pl_module.device)
        self.step_times.append(time.perf_counter() - self._t0)
        self._t0 = None
        if not self._validated:
            self._rss_train = peak_rss_mib()
        if pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**20
            self._cuda_train = max(self._cuda_train or 0.0, peak)

    def _grid(self, trainer: L.Trainer) -> tuple[int, int] | None:
        if self.sample_grid is not None:
            return int(self.sample_grid[0]), int(self.sample_grid[1])
        res = getattr(getattr(trainer, "datamodule", None), "resolution", None)
        return (int(res), int(res)) if res else None

    def sampling_seconds_per_image(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """Time ``generate`` for ``sample_num`` images (seeds ``0..n-1``); ``None`` if not possible."""
        grid = self._grid(trainer)
        if self.sample_num == 0 or grid is None or not hasattr(pl_module, "generate"):
            return None
        seeds = list(range(self.sample_num))
        denoiser = getattr(pl_module, "denoiser", None)
        labels = denoiser.cycling_labels(self.sample_num, pl_module.device) if denoiser is not None else None
        _sync(pl_module.device)
        t0 = time.perf_counter()
        pl_module.generate(grid, seeds, steps=self.sample_steps, labels=labels)
        _sync(pl_module.device)
        return (time.perf_counter() - t0) / self.sample_num

    def summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The measurements as a JSON-ready dict (sampling is timed here)."""
        times = self.step_times[self.skip_steps:] if len(self.step_times) > self.skip_steps else self.step_times
        median = statistics.median(times) if times else None
        dm = getattr(trainer, "datamodule", None)
        batch = getattr(dm, "batch_size", None)
        denoiser = getattr(pl_module, "denoiser", pl_module)
        grid = self._grid(trainer)
        return {
            "global_step": int(trainer.global_step),
            "steps_measured": len(times),
            "step_time_median_s": median,
            "step_time_mean_s": statistics.fmean(times) if times else None,
            "images_per_s": batch / median if batch and median else None,
            "batch_size": batch,
            "train_peak_rss_mib": self._rss_train,
            "train_peak_cuda_mib": self._cuda_train,
            "run_peak_rss_mib": peak_rss_mib(),
            "device": str(pl_module.device),
            "num_params": sum(p.numel() for p in denoiser.parameters()),
            "sample_grid": list(grid) if grid else None,
            "sample_num": self.sample_num,
            "sample_steps": self.sample_steps,
            "train_wall_s": self._train_seconds,
            "validation_runs": len(self.validation_seconds),
            "validation_s": sum(self.validation_seconds),
            "validation_share": sum(self.validation_seconds) / self._train_seconds if self._train_seconds else None,
            "sample_seconds_per_image": self.sampling_seconds_per_image(trainer, pl_module),
        }

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Time sampling, write ``throughput.json`` and log the numbers (global rank 0 writes)."""
        if self._train_start is not None:
            self._train_seconds = time.perf_counter() - self._train_start
        info = self.summary(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        log_dir = trainer.log_dir or trainer.default_root_dir
        path = Path(log_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(info, indent=2) + "\n")
        scalars = {f"throughput/{k}": float(v) for k, v in info.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=trainer.global_step)
