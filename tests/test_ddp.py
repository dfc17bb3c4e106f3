"""Two-process gloo DDP (``ddp_spawn`` on CPU) against one process with the same global batch.

What must hold: the loss and the weights match single-process training with the same global
batch (2 x 4 vs 1 x 8; tolerance below), every rank gets its own StepSeed seed, the checkpoint
is written by one process only, the validation loss is synchronised over ranks, and samples
split over ranks equal the samples of one process (per-sample seeds).

For the comparison the training noise must not depend on how a global batch is split, so the
test module draws each example's noise level and noise from a seed derived from the example
itself (the production module draws the batch's noise from the global RNG, which StepSeed
makes per-rank and resumable, but not split-invariant).
"""

from __future__ import annotations

import json
import os
import zlib
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from test_fault import TINY, tiny_dm

from lightning_infdiff.batch import FieldBatch
from lightning_infdiff.callbacks import (
    AtomicCheckpointIO,
    AtomicModelCheckpoint,
    NonFiniteGuard,
    StepSeed,
)
from lightning_infdiff.denoisers import SparseNeuralOperator
from lightning_infdiff.lit import DiffusionModule, Sampling, WarmupConstant
from lightning_infdiff.processes import GaussianProcess

STEPS = 3
SEEDS = list(range(10, 16))
GRID = (8, 12)


class PerSampleNoise(DiffusionModule):
    """Training noise seeded per example (a hash of its pixels and the step): split-invariant."""

    def training_step(self, batch: FieldBatch, batch_idx: int) -> torch.Tensor:
        levels, noises = [], []
        for img in batch.image:
            seed = zlib.crc32(img.detach().cpu().numpy().tobytes()) + 1_000_003 * self.global_step
            gen = torch.Generator().manual_seed(seed)
            levels.append(self.process.sample_logsnr(1, batch.grid, generator=gen))
            noises.append(torch.randn(img.shape, generator=gen))
        loss = self.process.loss(self.denoiser, batch.image, batch.indices, None,
                                 logsnr=torch.cat(levels), noise=torch.stack(noises)).mean()
        self.log("train/loss", loss, batch_size=len(batch))
        return loss


def make_module() -> PerSampleNoise:
    torch.manual_seed(0)
    den = SparseNeuralOperator(1, **{**TINY, "dropout": 0.0})
    return PerSampleNoise(den, GaussianProcess(), lr_scheduler=partial(WarmupConstant, warmup_steps=1),
                          sampling=Sampling(steps=1), val_logsnr_bins=2)


class CountingIO(AtomicCheckpointIO):
    """Appends ``pid path`` to ``saves.txt`` next to the checkpoint for every write."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        super().save_checkpoint(checkpoint, path, storage_options)
        with open(Path(path).parent / "saves.txt", "a") as f:
            f.write(f"{os.getpid()} {Path(path).name}\n")


class Record(L.Callback):
    """Per rank: losses, the StepSeed seed of the first batch, local and synced val loss, samples, weights."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.losses: list[float] = []
        self.first_seed: int | None = None
        self.val_local: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_seed is None:
            self.first_seed = torch.initial_seed()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val_local.append(float(outputs))

    def on_train_end(self, trainer, pl_module):
        rank, world = trainer.global_rank, trainer.world_size
        samples = pl_module.generate(GRID, SEEDS[rank::world], steps=2)
        torch.save({"samples": samples, "state": {k: v.cpu() for k, v in pl_module.state_dict().items()}},
                   f"{self.out}/rank{rank}.pt")
        with open(f"{self.out}/rank{rank}.json", "w") as f:
            guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
            json.dump({"skips": guard.total_skipped, "losses": self.losses, "seed": self.first_seed, "val_local": self.val_local,
                       "val_synced": float(trainer.callback_metrics["val/loss"])}, f)


def fit(tmp_path: Path, devices: int, batch_size: int) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    ck = AtomicModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp_spawn" if devices > 1 else "auto", max_steps=STEPS,
        val_check_interval=STEPS, check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[StepSeed(seed=5), NonFiniteGuard(), ck, Record(str(tmp_path))], plugins=[CountingIO()],
    )
    trainer.fit(make_module(), datamodule=tiny_dm(length=44, batch_size=batch_size, val_size=8))


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    fit(tmp_path / "one", 1, 8)
    fit(tmp_path / "two", 2, 4)
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in range(2)]

    # per-rank seeds: StepSeed's hash of (seed, rank, epoch, batch)
    assert [r["seed"] for r in ranks] == [StepSeed(seed=5).batch_seed(r, 0, 0) for r in range(2)]
    assert ranks[0]["seed"] != ranks[1]["seed"]
    assert [r["skips"] for r in ranks] == [0, 0]  # NonFiniteGuard's all-rank reduction ran, nothing skipped

    # same loss as one process with the same global batch: the ranks' mean is the global mean.
    # Tolerance: float32 sums in another order (one batch of 8 vs two of 4 plus a gloo
    # all-reduce of the gradients) differ in the last bits, then Adam steps amplify that a little.
    mean = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"], strict=True)]
    assert len(mean) == STEPS and all(torch.isfinite(torch.tensor(mean)))
    assert ranks[0]["losses"] != ranks[1]["losses"]  # the ranks did see different data
    assert mean == pytest.approx(one["losses"], rel=1e-5, abs=1e-7)
    states = [torch.load(tmp_path / n / "rank0.pt") for n in ("one", "two")]
    rank1 = torch.load(tmp_path / "two" / "rank1.pt")
    for k, v in states[0]["state"].items():
        assert torch.equal(states[1]["state"][k], rank1["state"][k]), f"ranks disagree on {k}"
        torch.testing.assert_close(states[1]["state"][k], v, rtol=1e-5, atol=1e-6, msg=k)

    # validation loss: synchronised (the mean of the ranks' own values, the same on every rank)
    assert ranks[0]["val_synced"] == ranks[1]["val_synced"]
    assert ranks[0]["val_local"] != ranks[1]["val_local"]
    assert ranks[0]["val_synced"] == pytest.approx((ranks[0]["val_local"][0] + ranks[1]["val_local"][0]) / 2, rel=1e-6)

    # the checkpoint was written by one process only, once per step, atomically
    saves = (tmp_path / "two" / "ckpt" / "saves.txt").read_text().split("\n")[:-1]
    assert len(saves) == STEPS and len({s.split()[0] for s in saves}) == 1
    assert sorted(p.name for p in (tmp_path / "two" / "ckpt").iterdir()) == ["last.ckpt", "saves.txt"]

    # samples split over 2 processes equal one process's samples (per-sample seeds), same weights
    split = torch.empty(len(SEEDS), *states[1]["samples"].shape[1:])
    split[0::2], split[1::2] = states[1]["samples"], rank1["samples"]
    module = make_module()
    module.load_state_dict(states[1]["state"])
    whole = module.eval().generate(GRID, SEEDS, steps=2)
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)
