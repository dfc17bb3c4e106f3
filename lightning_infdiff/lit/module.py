"""The LightningModule: wires a process, a denoiser and an optimiser together, nothing more.

Training minimises :meth:`GaussianProcess.loss` on the batch's sampled coordinates (with
condition dropout for classifier-free guidance). Validation measures the loss at fixed,
seeded noise levels in ``val_logsnr_bins`` bins (a loss-versus-noise-level curve) and, on the
first batch, draws sample grids at several resolutions. Sampling happens in
``validation_step`` so that an EMA callback's weights, swapped in for validation, are used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor

from ..batch import FieldBatch
from ..coords import as_grid, full_coords, gather, index_to_coords
from ..denoisers.base import Denoiser
from ..errors import UsageError
from ..images import save_grid
from ..processes import GaussianProcess, training_band
from ..samplers import sample
from .optim import clip_gradients, default_optimizer

__all__ = ["DiffusionModule", "warmup_cosine"]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class DiffusionModule(L.LightningModule):
    """Diffusion training and sampling for any denoiser and process.

    Args:
        denoiser: the network (any :class:`~lightning_infdiff.denoisers.Denoiser`).
        process: the diffusion process (schedule, noise operator, parametrisation, weighting).
        optimizer: optimiser factory (default: AdamW, lr 2e-4, no weight decay, fused on CPU and CUDA;
            see :mod:`.optim`).
        lr_schedule: ``cosine`` (warm-up then cosine decay over the run) or ``constant`` (after warm-up).
        warmup_steps: linear learning-rate warm-up steps.
        min_lr_ratio: final learning rate of the cosine schedule as a fraction of the peak.
        cond_drop_prob: probability of replacing a class label by the null class in training
            (classifier-free guidance; simple diffusion uses 0.1). Ignored for unconditional denoisers.
        val_logsnr_bins: number of fixed noise levels (bins uniform in ``t``) for the validation loss.
        val_seed: seed of the validation noise (the same noise every validation).
        sample_every_n_val: draw sample grids every this many validation runs (0 = never).
        num_samples: samples per grid.
        sample_grids: grids ``[H, W]`` to sample at; default: the validation grid, twice it, and
            a non-square ``[R, 2R]``.
        sampler: ``ddpm``, ``ddim`` or ``dpmpp_2m`` for the validation samples.
        sample_steps: solver steps for the validation samples.
        guidance_scale: classifier-free guidance scale for validation samples of conditional models.
        sample_seed: first seed of the validation samples (sample ``i`` uses ``sample_seed + i``).
        latent_prior_weight: weight of the latent prior's loss for diffusion-autoencoder
            denoisers (those with an ``encode`` method, e.g.
            :class:`~lightning_infdiff.denoisers.SparseAutoencoder`); ignored otherwise.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        process: GaussianProcess = lazy_instance(GaussianProcess),
        optimizer: OptimizerCallable | None = None,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        warmup_steps: int = 200,
        min_lr_ratio: float = 0.1,
        cond_drop_prob: float = 0.1,
        val_logsnr_bins: int = 8,
        val_seed: int = 1234,
        sample_every_n_val: int = 1,
        num_samples: int = 16,
        sample_grids: list[list[int]] | None = None,
        sampler: Literal["ddpm", "ddim", "dpmpp_2m"] = "dpmpp_2m",
        sample_steps: int = 25,
        guidance_scale: float = 1.0,
        sample_seed: int = 0,
        latent_prior_weight: float = 1.0,
    ) -> None:
        super().__init__()
        checks = {
            "warmup_steps": warmup_steps >= 0,
            "min_lr_ratio": 0.0 <= min_lr_ratio <= 1.0,
            "cond_drop_prob": 0.0 <= cond_drop_prob < 1.0,
            "val_logsnr_bins": val_logsnr_bins >= 1,
            "sample_every_n_val": sample_every_n_val >= 0,
            "num_samples": num_samples >= 1,
            "sample_steps": sample_steps >= 1,
            "latent_prior_weight": latent_prior_weight >= 0.0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise UsageError(f"invalid model.{bad[0]}={locals()[bad[0]]!r}")
        for g in sample_grids or []:
            if len(g) != 2 or min(g) < 2:
                raise UsageError(f"model.sample_grids entries must be [H, W] with H, W >= 2, got {g!r}")
        if _given_hyperparameters.get() is not None:
            # built by LightningCLI: the hyperparameters are the parsed config (plain data), so the
            # checkpoint reloads with weights-only unpickling
            self.save_hyperparameters()
        else:
            self.save_hyperparameters(ignore=["denoiser", "process", "optimizer"])
        self.denoiser = denoiser
        self.process = process if process is not None else GaussianProcess()
        self.optimizer_factory = optimizer
        self.lr_schedule, self.warmup_steps, self.min_lr_ratio = lr_schedule, warmup_steps, min_lr_ratio
        self.cond_drop_prob = cond_drop_prob
        self.val_logsnr_bins, self.val_seed = val_logsnr_bins, val_seed
        self.sample_every_n_val, self.num_samples = sample_every_n_val, num_samples
        self.sample_grids = [tuple(int(v) for v in g) for g in sample_grids] if sample_grids else None
        self.sampler, self.sample_steps, self.guidance_scale = sampler, sample_steps, guidance_scale
        self.sample_seed = sample_seed
        self.latent_prior_weight = latent_prior_weight
        #: side of the grid the data is served at (set from the DataModule, or on loading a checkpoint)
        self.data_resolution: int | None = None
        self._val_runs = 0
        self._val_curve: dict[int, list[Tensor]] = {}
        self._val_levels: Tensor | None = None

    # ---------------------------------------------------------------- set-up checks
    def setup(self, stage: str) -> None:
        """Check that the data and the denoiser agree (channels, classes) before any step runs."""
        self._check_precision()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        self._check_overlays(dm)
        if getattr(dm, "resolution", None) is not None:
            self.data_resolution = int(dm.resolution)  # the training band of the display filter
        channels = getattr(dm, "channels", None)
        if channels is not None and channels != self.denoiser.in_channels:
            raise UsageError(
                f"model.denoiser.init_args.in_channels={self.denoiser.in_channels} but the data has "
                f"{channels} channel(s): set in_channels to {channels}"
            )
        classes = getattr(dm, "num_classes", None)
        if self.denoiser.num_classes and not classes:
            raise UsageError(
                f"model.denoiser.init_args.num_classes={self.denoiser.num_classes} but the data has no labels"
            )
        if self.denoiser.num_classes and classes and classes != self.denoiser.num_classes:
            raise UsageError(
                f"model.denoiser.init_args.num_classes={self.denoiser.num_classes} but the data has {classes} classes"
            )

    def _check_precision(self) -> None:
        """Refuse all-half precisions: the process maths (schedules, DCT, sampler) must stay fp32."""
        precision = str(self.trainer.precision) if self._trainer is not None else ""
        if precision in ("bf16-true", "16-true"):
            raise UsageError(
                f"trainer.precision={precision!r} is not supported: it casts the whole module to half "
                "precision, but the diffusion maths must stay in float32; use 'bf16-mixed' (or '16-mixed', "
                "with loss scaling on GPU) to run the network in half precision"
            )

    def _check_overlays(self, dm: Any) -> None:
        """Refuse overlay combinations that would only fail at the first step."""
        sampler = getattr(dm, "sampler", None)
        if getattr(self.process, "multiscale", False) and sampler is not None and not sampler.is_full:
            raise UsageError(
                "model.process.init_args.multiscale=true needs full grids, but data.subsample_rate="
                f"{sampler.rate} / data.num_points={sampler.num_points} subsample them: set "
                "data.subsample_rate: 1 (configs/process/multiscale.yaml does) or disable multiscale"
            )

    # ---------------------------------------------------------------- training
    def _condition(self, batch: FieldBatch, train: bool) -> Tensor | None:
        if not self.denoiser.num_classes or batch.label is None:
            return None
        cond = batch.label.long()
        if train and self.cond_drop_prob > 0:
            drop = torch.rand(cond.shape, device=cond.device) < self.cond_drop_prob
            cond = torch.where(drop, torch.full_like(cond, self.denoiser.num_classes), cond)
        return cond

    @property
    def is_autoencoder(self) -> bool:
        """Whether the denoiser is a diffusion autoencoder (conditioned on its own latent)."""
        return callable(getattr(self.denoiser, "encode", None))

    def encode_batch(self, batch: FieldBatch, train: bool) -> Tensor:
        """Latents of the clean images (diffusion autoencoders only).

        In training the encoder sees an independent random coordinate subset of the same size
        as the denoiser's (∞-Diff section 4.4); otherwise it sees the full grid.
        """
        image, grid = batch.image, batch.grid
        b, n = len(batch), batch.num_points
        enc_idx = None
        if train and batch.indices is not None:
            enc_idx = torch.rand(b, grid[0] * grid[1], device=image.device).argsort(dim=1)[:, :n]
        coords = full_coords(b, grid, image.device) if enc_idx is None else index_to_coords(enc_idx, grid)
        return self.denoiser.encode(gather(image, enc_idx), coords, grid)

    def training_step(self, batch: FieldBatch, batch_idx: int) -> Tensor:
        """Mean process loss over the batch's sampled coordinates (+ the latent prior's loss)."""
        b = len(batch)
        z = self.encode_batch(batch, True) if self.is_autoencoder else None
        cond = z if z is not None else self._condition(batch, True)
        loss = self.process.loss(self.denoiser, batch.image, batch.indices, cond, grid=batch.grid,
                                 offsets=batch.offsets).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        if z is not None:
            prior = self.denoiser.prior_loss(z).mean()
            self.log("train/prior_loss", prior, batch_size=b)
            loss = loss + self.latent_prior_weight * prior
        return loss

    # ---------------------------------------------------------------- validation
    def val_levels(self, grid: tuple[int, int]) -> Tensor:
        """Fixed validation logSNRs: the schedule on ``grid`` at bin centres ``t = (k + 1/2) / K``."""
        t = (torch.arange(self.val_logsnr_bins, dtype=torch.float64) + 0.5) / self.val_logsnr_bins
        return self.process.schedule.logsnr(t, grid).float()

    def validation_step(self, batch: FieldBatch, batch_idx: int) -> Tensor:
        """Loss per noise-level bin with seeded noise; sample grids on the first batch."""
        b = len(batch)
        levels = self.val_levels(batch.grid).to(self.device)
        self._val_levels = levels
        z = self.encode_batch(batch, False) if self.is_autoencoder else None
        cond = z if z is not None else self._condition(batch, False)
        if z is not None:
            gen = torch.Generator(device="cpu").manual_seed(self.val_seed + 7919 * batch_idx)
            prior = self.denoiser.prior.loss(z.detach(), generator=gen).mean()
            self.log("val/prior_loss", prior, batch_size=b, sync_dist=True)
        losses = []
        for k, lam in enumerate(levels):
            gen = torch.Generator(device="cpu").manual_seed(self.val_seed + 7919 * batch_idx + k)
            white = torch.randn(batch.image.shape, generator=gen).to(self.device)
            loss = self.process.loss(
                self.denoiser, batch.image, batch.indices, cond, logsnr=lam.expand(b), noise=white, grid=batch.grid
            ).mean()
            losses.append(loss)
            self._val_curve.setdefault(k, []).append(loss.detach())
        total = torch.stack(losses).mean()
        self.log("val/loss", total, prog_bar=True, batch_size=b, sync_dist=True)
        if batch_idx == 0 and self._should_sample():
            self.log_samples(batch.grid)
        return total

    def on_validation_epoch_end(self) -> None:
        """Log the loss-versus-noise-level curve and write it as JSON next to the logs."""
        if not self._val_curve:
            return
        levels = self._val_levels
        curve = []
        for k in sorted(self._val_curve):
            value = torch.stack(self._val_curve[k]).mean()
            value = self.all_gather(value).mean() if self.trainer.world_size > 1 else value
            curve.append({"logsnr": float(levels[k]), "loss": float(value)})
            self.log(f"val_loss_by_logsnr/bin{k:02d}", value, sync_dist=False, rank_zero_only=True)
        self._val_curve.clear()
        self._val_runs += 1
        log_dir = self._log_dir()
        if log_dir is not None and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            path = Path(log_dir) / "val_loss_by_logsnr.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.write(json.dumps({"step": int(self.global_step), "curve": curve}) + "\n")

    # ---------------------------------------------------------------- sampling
    def _should_sample(self) -> bool:
        t = self._trainer
        if t is None or t.sanity_checking or not self.sample_every_n_val or not t.is_global_zero:
            return False
        return self._val_runs % self.sample_every_n_val == 0

    def _log_dir(self) -> str | None:
        logger = self.logger
        return getattr(logger, "log_dir", None) if logger is not None else None

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
    ) -> Tensor:
        """Draw samples ``(B, C, H, W)`` in ``[-1, 1]`` on any grid, one per seed.

        Mollified models are Wiener-deblurred (``deblur=True``) for display and metrics, within
        the band of the training grid (:meth:`GaussianProcess.display`). The caller's autocast
        (if any) applies to the network only. Diffusion autoencoders decode ``latents (B, D)``
        when given (e.g. from :meth:`encode_images`), else latents drawn from their prior with
        the same seeds; they take no labels and no guidance. A non-square ``grid`` is a wider
        view with square pixels (``canvas="wide"``, the default unless ``grid`` is a
        :class:`~lightning_infdiff.coords.Grid` with its own) or the training square stretched
        (``"stretch"``); see :mod:`lightning_infdiff.coords`.
        """
        canvas = canvas or getattr(grid, "canvas", None) or "wide"
        grid = as_grid((int(grid[0]), int(grid[1])), canvas)
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            if self.is_autoencoder:
                if labels is not None:
                    raise ValueError("a diffusion autoencoder takes no labels: pass latents (or none) instead")
                if latents is None:
                    latents = self.denoiser.sample_latents(list(seeds), self.device)
                if latents.shape[0] != len(seeds):
                    raise ValueError(f"got {latents.shape[0]} latents for {len(seeds)} seeds")
                labels, guidance_scale = latents.to(self.device), 1.0
            elif latents is not None:
                raise ValueError("latents were given but the denoiser is not a diffusion autoencoder")
            x = sample(
                self.process, self.denoiser, grid, list(seeds),
                channels=self.denoiser.in_channels, steps=steps or self.sample_steps,
                sampler=sampler or self.sampler, eta=eta, clip=clip, cond=labels,
                guidance_scale=self.guidance_scale if guidance_scale is None else guidance_scale,
                device=self.device, progress=progress,
            )
        finally:
            self.denoiser.train(was_training)
        if deblur:
            band = training_band(self.denoiser, grid, getattr(self, "data_resolution", None))
            x = self.process.at(canvas).display(x, band=band)
        return x.clamp(-1.0, 1.0)

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """Latents ``(B, D)`` of images ``(B, C, H, W)`` in ``[-1, 1]`` at their own grid."""
        if not self.is_autoencoder:
            raise ValueError("encode_images needs a diffusion-autoencoder denoiser (e.g. SparseAutoencoder)")
        return self.encode_batch(FieldBatch(images.to(self.device).float()), False)

    def default_labels(self, n: int) -> Tensor | None:
        """Labels ``0, 1, 2, ...`` (cycling) for conditional models, else ``None``."""
        if not self.denoiser.num_classes:
            return None
        return torch.arange(n, device=self.device) % self.denoiser.num_classes

    def log_samples(self, grid: tuple[int, int]) -> None:
        """Sample grids at every configured resolution; log to TensorBoard and save as PNG."""
        r_h, r_w = grid
        grids = self.sample_grids or [(r_h, r_w), (2 * r_h, 2 * r_w), (r_h, 2 * r_w)]
        seeds = list(range(self.sample_seed, self.sample_seed + self.num_samples))
        log_dir = self._log_dir()
        for g in grids:
            x = self.generate(g, seeds, labels=self.default_labels(len(seeds)))
            img = save_grid(x, None)
            exp = getattr(self.logger, "experiment", None)
            if exp is not None and hasattr(exp, "add_image"):
                exp.add_image(f"samples/{g[0]}x{g[1]}", img, self.global_step, dataformats="HWC")
            if log_dir is not None:
                out = Path(log_dir) / "samples" / f"step{self.global_step:07d}_{g[0]}x{g[1]}.png"
                save_grid(x, out)

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> Any:
        """AdamW (or the configured optimiser) with warm-up and cosine or constant LR."""
        params = [p for p in self.denoiser.parameters() if p.requires_grad]
        if self.optimizer_factory is None:
            opt = default_optimizer(params)
        else:
            opt = self.optimizer_factory(params)
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0
        if self.lr_schedule == "cosine" and total <= 0:
            raise ValueError("lr_schedule 'cosine' needs a finite run: set trainer.max_steps or max_epochs")

        def factor(step: int) -> float:
            if self.lr_schedule == "constant":
                return (step + 1) / self.warmup_steps if step < self.warmup_steps else 1.0
            return warmup_cosine(step, self.warmup_steps, total, self.min_lr_ratio)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
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
