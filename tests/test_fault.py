"""Fault tolerance in-process: the non-finite guard, atomic checkpoints, exact resume.

The helpers here (``tiny_module``, ``tiny_dm``, ``LossRecorder``) are shared with the other
fault, DDP and precision tests.
"""

from __future__ import annotations

import errno
import os
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_infdiff.callbacks import (
    EMA,
    AtomicCheckpointIO,
    AtomicModelCheckpoint,
    NonFiniteGuard,
    NonFiniteTrainingError,
    StepSeed,
)
from lightning_infdiff.checkpoint import load_checkpoint
from lightning_infdiff.data import FieldDataModule, GaussianBlobs
from lightning_infdiff.data.sources import ImageSource
from lightning_infdiff.denoisers import SparseNeuralOperator
from lightning_infdiff.lit import DiffusionModule, Sampling, WarmupConstant
from lightning_infdiff.processes import GaussianProcess

TINY = dict(train_resolution=16, channels=8, depth=1, kernel_size=3, inner_resolution=8, inner_channels=8,
            channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[], emb_dim=32, head_channels=8)


def tiny_module(seed: int = 0, **kw) -> DiffusionModule:
    torch.manual_seed(seed)
    args = dict(lr_scheduler=partial(WarmupConstant, warmup_steps=1), sampling=Sampling(steps=1), val_logsnr_bins=2)
    args.update(kw)
    return DiffusionModule(SparseNeuralOperator(1, **TINY), GaussianProcess(), **args)


def tiny_dm(length: int = 28, batch_size: int = 4, source: ImageSource | None = None, **kw) -> FieldDataModule:
    args = dict(resolution=16, batch_size=batch_size, num_workers=0, val_size=4, subsample_rate=2)
    args.update(kw)
    return FieldDataModule(source or GaussianBlobs(length, 1), **args)


def trainer(tmp_path: Path, callbacks: list, **kw) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, max_steps=4, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                val_check_interval=3, check_val_every_n_epoch=None, default_root_dir=str(tmp_path),
                log_every_n_steps=1)
    args.update(kw)
    if any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks):
        args["enable_checkpointing"] = True
    return L.Trainer(callbacks=callbacks, **args)


class LossRecorder(L.Callback):
    """Records ``(global_step, loss)`` after every training batch (and optionally appends it to a file)."""

    def __init__(self, path: str | None = None) -> None:
        self.losses: list[tuple[int, float]] = []
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        item = (int(trainer.global_step), float(outputs["loss"]))
        self.losses.append(item)
        if self.path:
            with open(self.path, "a") as f:
                f.write(f"{item[0]} {item[1].hex()}\n")
                f.flush()


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


# ------------------------------------------------------------------ non-finite guard
class Poison(L.Callback):
    """Makes the denoiser return NaN on the chosen (epoch-local) training batch indices."""

    def __init__(self, module: DiffusionModule, batches: set[int] | None = None, from_batch: int | None = None):
        self.batches, self.from_batch, self.active = batches or set(), from_batch, False
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.exp_avg: list[torch.Tensor] = []
        module.denoiser.register_forward_hook(self._hook)

    def _hook(self, mod, args, out):
        return out * float("nan") if (self.active and mod.training) else out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.active = batch_idx in self.batches or (self.from_batch is not None and batch_idx >= self.from_batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.snapshots.append(params(pl_module))
        opt = trainer.optimizers[0]
        first = next(iter(opt.state.values()), None)
        self.exp_avg.append(first["exp_avg"].clone() if first else torch.zeros(()))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_nonfinite_guard_skips_bad_steps_and_counts_them(tmp_path, precision):
    module = tiny_module()
    poison = Poison(module, batches={2, 3})
    guard = NonFiniteGuard(max_consecutive=3)
    before = params(module)
    t = trainer(tmp_path, [guard, poison], max_steps=6, precision=precision, val_check_interval=6,
                gradient_clip_val=1.0)
    with pytest.warns(UserWarning, match="skipped optimiser step 2 .*non-finite loss"):
        t.fit(module, datamodule=tiny_dm())
    snaps = poison.snapshots
    assert len(snaps) == 6 and t.global_step == 6
    assert all(torch.isfinite(v).all() for v in snaps[-1].values())
    changed = [any(not torch.equal(snaps[i][k], (snaps[i - 1] if i else before)[k]) for k in before) for i in range(6)]
    assert changed == [True, True, False, False, True, True]
    assert torch.equal(poison.exp_avg[1], poison.exp_avg[3])  # Adam moments untouched too
    assert guard.total_skipped == 2 and guard.in_a_row == 0
    assert float(t.callback_metrics["train/nonfinite_skips"]) == 2.0


def test_nonfinite_guard_under_gradient_accumulation(tmp_path):
    module = tiny_module()
    poison = Poison(module, batches={3})  # micro-batch 3 = second half of optimiser step 1
    guard = NonFiniteGuard(max_consecutive=3)
    before = params(module)
    t = trainer(tmp_path, [guard, poison], max_steps=3, accumulate_grad_batches=2, val_check_interval=6)
    with pytest.warns(UserWarning, match="skipped optimiser step 1"):
        t.fit(module, datamodule=tiny_dm())
    snaps = poison.snapshots  # one per micro-batch: 0,1 -> step 0; 2,3 -> step 1 (skipped); 4,5 -> step 2
    assert len(snaps) == 6
    assert any(not torch.equal(snaps[1][k], before[k]) for k in before)
    assert all(torch.equal(snaps[3][k], snaps[1][k]) for k in before)  # the whole window was dropped
    assert any(not torch.equal(snaps[5][k], snaps[3][k]) for k in before)
    assert guard.total_skipped == 1


def test_nonfinite_guard_stops_with_step_and_cause(tmp_path):
    module = tiny_module()
    poison = Poison(module, from_batch=2)
    t = trainer(tmp_path, [NonFiniteGuard(max_consecutive=3, warn_first=0), poison], max_steps=20)
    with pytest.raises(NonFiniteTrainingError, match=r"3 optimiser steps in a row \(the last at global step 4\).*"
                       r"non-finite loss.*learning rate \(0\.0002\) is probably too high"):
        t.fit(module, datamodule=tiny_dm())
    assert all(torch.isfinite(v).all() for v in module.parameters())
    assert all(torch.equal(a, b) for a, b in zip(poison.snapshots[1].values(), params(module).values(), strict=True))


class NaNPixels(ImageSource):
    """A dataset whose images hold NaN pixels (a broken tensor dataset)."""

    channels, num_classes = 1, None

    def __len__(self) -> int:
        return 28

    def load(self, index, resolution, rng, train):
        import numpy as np

        image = np.zeros((1, resolution, resolution), np.float32)
        image[0, 0, 0] = np.nan
        return image, None


def test_nonfinite_guard_names_bad_data(tmp_path):
    t = trainer(tmp_path, [NonFiniteGuard(max_consecutive=2, warn_first=0)], max_steps=5)
    with pytest.raises(ValueError, match=r"training batch 0 \(epoch 0, global step 0\) holds 4 NaN/inf pixel "
                       r"values.*NaNPixels"):
        t.fit(tiny_module(), datamodule=tiny_dm(source=NaNPixels()))


def test_any_nonfinite_is_exact():
    """NaN and ±inf anywhere are found, in any dtype; large finite values (whose 2-norm would
    overflow) and empty tensors are not flagged."""
    from lightning_infdiff.callbacks.nonfinite import any_nonfinite

    ok = [torch.randn(5, 3), torch.full((4,), 3e38), torch.ones(2, dtype=torch.bfloat16), torch.empty(0)]
    assert not bool(any_nonfinite(ok)) and not bool(any_nonfinite([]))
    for bad in (float("nan"), float("inf"), float("-inf")):
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            t = torch.zeros(7, dtype=dtype)
            t[5] = bad
            assert bool(any_nonfinite([*ok, t])), (bad, dtype)
            assert bool(any_nonfinite([t, *ok])), (bad, dtype)


def test_nonfinite_guard_checks_its_arguments():
    with pytest.raises(ValueError, match="max_consecutive must be >= 1"):
        NonFiniteGuard(max_consecutive=0)


# ------------------------------------------------------------------ atomic checkpoints
def _fit_with_checkpoints(tmp_path: Path, max_steps: int, module=None, ckpt_path=None) -> tuple[L.Trainer, Path]:
    ck = AtomicModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    module = module or tiny_module()
    t = trainer(tmp_path, [ck], max_steps=max_steps, val_check_interval=50)
    t.fit(module, datamodule=tiny_dm(), ckpt_path=ckpt_path)
    return t, tmp_path / "ckpt" / "last.ckpt"


class Killed(BaseException):
    """Stands in for the process dying (not an ``Exception``: nothing may catch and continue)."""


class _Writer:
    """Stands in for the file object of ``os.fdopen``: writes part of the data, then fails."""

    def __init__(self, real, error: BaseException):
        self.real, self.error = real, error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()
        return False

    def write(self, data: bytes) -> int:
        self.real.write(data[: len(data) // 2])
        self.real.flush()
        raise self.error

    def flush(self):
        self.real.flush()

    def fileno(self):
        return self.real.fileno()


@pytest.mark.parametrize(
    "error,message",
    [(Killed(), None), (OSError(errno.ENOSPC, "No space left on device"), "the disk is full")],
    ids=["killed-mid-write", "disk-full"],
)
def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, error, message):
    t, last = _fit_with_checkpoints(tmp_path, 2)
    assert isinstance(t.strategy.checkpoint_io, AtomicCheckpointIO)
    good = last.read_bytes()
    assert load_checkpoint(last)["global_step"] == 2
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: _Writer(real_fdopen(fd, mode, *a, **k), error))
    expected = (Killed,) if message is None else (OSError,)
    with pytest.raises(expected) as err:
        _fit_with_checkpoints(tmp_path, 4, ckpt_path=str(last))
    if message is not None:
        assert message in str(err.value) and str(last) in str(err.value) and "previous checkpoint" in str(err.value)
    monkeypatch.undo()
    assert last.read_bytes() == good and load_checkpoint(last)["global_step"] == 2
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.ckpt"]  # no temporary file left


def test_atomic_write_keeps_the_usual_permissions(tmp_path):
    from lightning_infdiff.callbacks import atomic_write_bytes

    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    atomic = atomic_write_bytes(b"x", tmp_path / "sub" / "atomic")
    assert atomic.stat().st_mode == plain.stat().st_mode and atomic.read_bytes() == b"x"


def test_plain_torch_save_would_have_been_corrupted(tmp_path):
    """Control: the same interrupted write straight onto the target destroys it (why atomic writes matter)."""
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
    data = path.read_bytes()
    with open(path, "wb") as f:  # what an in-place writer does before the kill
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="the file is corrupt"):
        load_checkpoint(path)


# ------------------------------------------------------------------ exact resume
def _run(tmp_path: Path, max_steps: int, seeded: bool, ckpt_path: str | None = None):
    torch.manual_seed(123)  # a different global state before each run: resume must not depend on it
    module = tiny_module()
    rec = LossRecorder()
    ck = AtomicModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    cbs = [rec, ck, EMA(half_life_images=20)] + ([StepSeed(seed=7)] if seeded else [])
    t = trainer(tmp_path, cbs, max_steps=max_steps, val_check_interval=3, gradient_clip_val=1.0)
    t.fit(module, datamodule=tiny_dm(), ckpt_path=ckpt_path)
    return rec.losses, params(module)


@pytest.mark.parametrize("seeded", [True, False], ids=["StepSeed", "no-StepSeed"])
def test_resume_reproduces_the_uninterrupted_loss_curve(tmp_path, seeded):
    """8 steps straight vs 4 steps + resume to 8 (crossing validation and an epoch end): bitwise on CPU."""
    ref, ref_params = _run(tmp_path / "ref", 8, seeded)
    first, _ = _run(tmp_path / "a", 4, seeded)
    assert first == ref[:4]  # same start (same seeds)
    ckpt = tmp_path / "a" / "ckpt" / "step=4.ckpt"
    rest, rest_params = _run(tmp_path / "b", 8, seeded, ckpt_path=str(ckpt))
    same = rest == ref[4:] and all(torch.equal(ref_params[k], rest_params[k]) for k in ref_params)
    # without StepSeed the noise after the resume comes from a different global RNG state
    assert same is seeded


def test_last_checkpoint_is_written_at_the_final_step(tmp_path):
    """Periodic by steps (every 3) and also at the end of a run that stops between two periods."""
    ck = AtomicModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_last=True, save_top_k=0)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            last = tmp_path / "ckpt" / "last.ckpt"
            seen.append(load_checkpoint(last)["global_step"] if last.exists() else None)

    trainer(tmp_path, [ck, Spy()], max_steps=4, val_check_interval=50).fit(tiny_module(), datamodule=tiny_dm())
    assert seen == [None, None, None, 3]  # Spy runs before the checkpoint callback at each step
    assert load_checkpoint(tmp_path / "ckpt" / "last.ckpt")["global_step"] == 4


@pytest.mark.parametrize(
    "error,message",
    [(Killed(), None), (OSError(errno.ENOSPC, "No space left on device"), "the disk is full")],
    ids=["killed-mid-write", "disk-full"],
)
def test_a_failed_sample_image_write_leaves_no_partial_png(tmp_path, monkeypatch, error, message):
    """Sampling killed (or out of disk) while writing: earlier images stay whole, none is half-written."""
    from PIL import Image

    from lightning_infdiff.images import save_images

    images = torch.linspace(-1, 1, 2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    first = save_images(images[:1], tmp_path, ["seed0"])[0]
    good = first.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: _Writer(real_fdopen(fd, mode, *a, **k), error))
    with pytest.raises((Killed,) if message is None else (OSError,)) as err:
        save_images(images.flip(0), tmp_path, ["seed0", "seed1"])
    if message is not None:
        assert message in str(err.value) and "previous image there is intact" in str(err.value)
    monkeypatch.undo()
    assert first.read_bytes() == good and Image.open(first).size == (8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed0.png"]  # no partial seed1.png, no temporary file
