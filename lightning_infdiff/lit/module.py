"""The LightningModule: wires a denoiser, a process, an optimiser and a learning-rate schedule.

Training minimises :meth:`GaussianProcess.loss` on the batch's sampled coordinates plus any loss
of the denoiser's own (:meth:`Denoiser.auxiliary_losses`); what the denoiser is conditioned on is
the denoiser's hook too (:meth:`Denoiser.condition`). Validation measures the loss at
``val_logsnr_bins`` fixed, seeded noise levels. Everything optional is a callback: sample sheets
(:class:`~lightning_infdiff.callbacks.SampleGrids`), the loss-by-noise-level file
(:class:`~lightning_infdiff.callbacks.NoiseLevelCurve`), EMA, FID, throughput.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor

from ..batch import FieldBatch
from ..coords import as_grid
from ..denoisers.base import Denoiser
from ..errors import UsageError
from ..precision import refuse_all_half
from ..processes import GaussianProcess, training_band
from ..samplers import sample
from .optim import clip_gradients, default_optimizer
from .sampling import Sampling
from .schedulers import WarmupCosine, run_length_needed

__all__ = ["DiffusionModule", "Sampling"]


class _Shared:
    """A factory that deep copies share instead of copying (the EMA callback copies the module;
    under DDP LightningCLI's factories hold its parser, which cannot be copied). Pickles keep it."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


def _shared(fn: Any) -> _Shared | None:
    return None if fn is None else _Shared(fn)


class DiffusionModule(L.LightningModule):
    """Diffusion training and sampling for any denoiser and process.

    Args:
        denoiser: the network (any :class:`~lightning_infdiff.denoisers.Denoiser`).
        process: the diffusion process (schedule, noise operator, parametrisation, weighting).
        optimizer: optimiser factory (default: AdamW, lr 2e-4, no weight decay, fused on CPU and CUDA;
            see :mod:`.optim`).
        lr_scheduler: scheduler factory, stepped every optimiser step (default: 200 warm-up steps,
            then cosine decay to 0.1 of the peak over the run; see :mod:`.schedulers`).
        cond_drop_prob: probability of replacing a class label by the null class in training
            (classifier-free guidance; simple diffusion uses 0.1). Ignored for unconditional denoisers.
        sampling: sampler, steps and guidance used by :meth:`generate` when not given.
        val_logsnr_bins: number of fixed noise levels (bins uniform in ``t``) for the validation loss.
        val_seed: seed of the validation noise (the same noise every validation).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        process: GaussianProcess = lazy_instance(GaussianProcess),
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        cond_drop_prob: float = 0.1,
        sampling: Sampling = Sampling(),  # noqa: B008 - frozen dataclass, shared safely
        val_logsnr_bins: int = 8,
        val_seed: int = 1234,
    ) -> None:
        super().__init__()
        if not 0.0 <= cond_drop_prob < 1.0:
            raise UsageError(f"invalid model.cond_drop_prob={cond_drop_prob!r}: must be in [0, 1)")
        if val_logsnr_bins < 1:
            raise UsageError(f"invalid model.val_logsnr_bins={val_logsnr_bins!r}: must be >= 1")
        if _given_hyperparameters.get() is not None:
            # built by LightningCLI: the hyperparameters are the parsed config (plain data), so the
            # checkpoint reloads with weights-only unpickling
            self.save_hyperparameters()
        else:  # built in Python: keep the hyperparameters plain data too
            self.save_hyperparameters(ignore=["denoiser", "process", "optimizer", "lr_scheduler", "sampling"])
            self.hparams["sampling"] = asdict(sampling) if isinstance(sampling, Sampling) else dict(sampling)
        self.denoiser = denoiser
        self.process = process if process is not None else GaussianProcess()
        self.optimizer_factory, self.scheduler_factory = _shared(optimizer), _shared(lr_scheduler)
        self.cond_drop_prob = cond_drop_prob
        self.sampling = Sampling(**sampling) if isinstance(sampling, dict) else sampling
        self.val_logsnr_bins, self.val_seed = val_logsnr_bins, val_seed
        #: side of the grid the data is served at (set from the DataModule, or on loading a checkpoint)
        self.data_resolution: int | None = None

    def setup(self, stage: str) -> None:
        """Refuse data, denoiser and process that would only fail at the first step."""
        if self._trainer is not None:
            refuse_all_half(self.trainer.precision)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "check_model"):
            dm.check_model(self.denoiser, self.process)
            self.data_resolution = int(dm.resolution)  # the training band of the display filter

    # ---------------------------------------------------------------- training and validation
    def training_step(self, batch: FieldBatch, batch_idx: int) -> Tensor:
        """Mean process loss over the batch's sampled coordinates, plus the denoiser's own losses."""
        b = len(batch)
        cond = self.denoiser.condition(batch, train=True, drop_prob=self.cond_drop_prob)
        loss = self.process.loss(self.denoiser, batch.image, batch.indices, cond, grid=batch.grid,
                                 offsets=batch.offsets).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for name, extra in self.denoiser.auxiliary_losses(cond).items():
            self.log(f"train/{name}", extra, batch_size=b)
            loss = loss + extra
        return loss

    def val_levels(self, grid: tuple[int, int]) -> Tensor:
        """Fixed validation logSNRs: the schedule on ``grid`` at bin centres ``t = (k + 1/2) / K``."""
        t = (torch.arange(self.val_logsnr_bins, dtype=torch.float64) + 0.5) / self.val_logsnr_bins
        return self.process.schedule.logsnr(t, grid).float()

    def validation_step(self, batch: FieldBatch, batch_idx: int) -> Tensor:
        """Loss at each fixed noise level with seeded noise (logged per bin and as their mean)."""
        b = len(batch)
        cond = self.denoiser.condition(batch, train=False)
        gen = torch.Generator(device="cpu").manual_seed(self.val_seed + 7919 * batch_idx)
        for name, extra in self.denoiser.auxiliary_losses(cond, gen).items():
            self.log(f"val/{name}", extra, batch_size=b, sync_dist=True)
        losses = []
        for k, lam in enumerate(self.val_levels(batch.grid).to(self.device)):
            gen = torch.Generator(device="cpu").manual_seed(self.val_seed + 7919 * batch_idx + k)
            white = torch.randn(batch.image.shape, generator=gen).to(self.device)
            loss = self.process.loss(
                self.denoiser, batch.image, batch.indices, cond, logsnr=lam.expand(b), noise=white, grid=batch.grid
            ).mean()
            self.log(f"val_loss_by_logsnr/bin{k:02d}", loss, batch_size=b, sync_dist=True)
            losses.append(loss)
        total = torch.stack(losses).mean()
        self.log("val/loss", total, prog_bar=True, batch_size=b, sync_dist=True)
        return total

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(
        self,
        grid: Sequence[int],
        seeds: Sequence[int],
        sampler: str | None = None,
        steps: int | None = None,
        eta: float = 0.0,
        guidance_scale: float | None = None,
        labels: Tensor | None = None,
        clip: Literal["none", "static", "dynamic"] = "static",
        deblur: bool = True,
        progress: bool = False,
        latents: Tensor | None = None,
        canvas: Literal["wide", "stretch"] | None = None,
        guidance_interval: Sequence[float] | None = None,
        guidance_rescale: float | None = None,
    ) -> Tensor:
        """Draw samples ``(B, C, H, W)`` in ``[-1, 1]`` on any grid, one per seed.

        Mollified models are Wiener-deblurred (``deblur=True``) for display and metrics, within
        the band of the training grid (:meth:`GaussianProcess.display`). The caller's autocast
        (if any) applies to the network only. Diffusion autoencoders decode ``latents (B, D)``
        when given, else latents drawn from their prior with the same seeds; they take no labels
        and no guidance. A non-square ``grid`` is a wider view with square pixels
        (``canvas="wide"``, the default unless ``grid`` is a :class:`~lightning_infdiff.coords.Grid`
        with its own) or the training square stretched (``"stretch"``); see :mod:`lightning_infdiff.coords`.
        Arguments left ``None`` take the module's :class:`Sampling` settings.
        """
        canvas = canvas or getattr(grid, "canvas", None) or "wide"
        grid = as_grid((int(grid[0]), int(grid[1])), canvas)
        cond = self.denoiser.sampling_condition(list(seeds), labels, latents, self.device)
        scale = self.sampling.guidance_scale if guidance_scale is None else guidance_scale
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            x = sample(
                self.process, self.denoiser, grid, list(seeds), channels=self.denoiser.in_channels,
                steps=steps or self.sampling.steps, sampler=sampler or self.sampling.sampler, eta=eta, clip=clip,
                cond=cond, guidance_scale=scale if self.denoiser.supports_guidance else 1.0,
                device=self.device, progress=progress,
                guidance_interval=self.sampling.guidance_interval if guidance_interval is None else guidance_interval,
                guidance_rescale=self.sampling.guidance_rescale if guidance_rescale is None else guidance_rescale,
            )
        finally:
            self.denoiser.train(was_training)
        if deblur:
            band = training_band(self.denoiser, grid, self.data_resolution)
            x = self.process.at(canvas).display(x, band=band)
        return x.clamp(-1.0, 1.0)

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        """The optimiser and the learning-rate schedule, stepped every optimiser step."""
        params = [p for p in self.denoiser.parameters() if p.requires_grad]
        opt = default_optimizer(params) if self.optimizer_factory is None else self.optimizer_factory(params)
        sched = WarmupCosine(opt) if self.scheduler_factory is None else self.scheduler_factory(opt)
        if run_length_needed(sched):
            total = float(self.trainer.estimated_stepping_batches) if self._trainer is not None else math.inf
            if not math.isfinite(total) or total <= 0:
                raise UsageError(
                    "model.lr_scheduler decays over the run, which has no known length: set trainer.max_steps, "
                    "or use lightning_infdiff.lit.WarmupConstant"
                )
            sched.total_steps = int(total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping, or exact clipping for a fused optimiser without a loss scale (see :mod:`.optim`)."""
        if not clip_gradients(self.trainer.precision_plugin, optimizer, gradient_clip_val or 0.0, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """Call the denoiser."""
        return self.denoiser(*args, **kwargs)
