"""The DataModule inside a real Lightning Trainer: epochs, checkpoints and mid-epoch resume."""

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_infdiff.batch import FieldBatch
from lightning_infdiff.data import BatchPlan, FieldCollate, FieldDataModule, GaussianBlobs


class _Recorder(L.LightningModule):
    """A one-parameter model that records a fingerprint of every training batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, int, float, int]] = []

    def training_step(self, batch: FieldBatch, batch_idx: int):
        assert isinstance(batch, FieldBatch)
        fp = (
            self.current_epoch,
            batch_idx,
            round(batch.image.sum().item(), 4),
            int(batch.indices.sum()),
        )
        self.seen.append(fp)
        return (self.w * batch.values.mean()) ** 2 + self.w.sum() * 0

    def validation_step(self, batch: FieldBatch, batch_idx: int) -> None:
        assert batch.indices is None

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path, **kw):
    args = dict(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    args.update(kw)
    return L.Trainer(**args)


def _dm():
    return FieldDataModule(
        GaussianBlobs(length=100), resolution=8, batch_size=8, subsample_rate=4, val_size=8
    )


def test_fit_and_resume_mid_epoch_continues_the_same_sequence(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1)
    ref = _Recorder()
    _trainer(tmp_path, callbacks=[ckpt]).fit(ref, datamodule=_dm())
    per_epoch = 92 // 8
    assert len(ref.seen) == 2 * per_epoch
    assert [s[2:] for s in ref.seen[:per_epoch]] != [s[2:] for s in ref.seen[per_epoch:]]

    for step in (4, 16):  # mid-epoch 0 and mid-epoch 1
        path = next((tmp_path / "ckpt").glob(f"*step={step}.ckpt"))
        resumed = _Recorder()
        _trainer(tmp_path / f"resume{step}").fit(resumed, datamodule=_dm(), ckpt_path=path)
        assert resumed.seen == ref.seen[step:], f"resume from step {step} diverged"


def test_yaml_config_instantiates_and_bad_key_is_named():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    text = """
data:
  class_path: lightning_infdiff.data.FieldDataModule
  init_args:
    source:
      class_path: lightning_infdiff.data.GaussianBlobs
      init_args: {length: 64, channels: 1}
    resolution: 16
    train_resolutions: [8, 16]
    strategy: sobol
    subsample_rate: 2
"""
    cfg = parser.parse_string(text)
    init = (
        parser.instantiate(cfg)
        if hasattr(parser, "instantiate")
        else parser.instantiate_classes(cfg)
    )
    dm = init.data
    assert isinstance(dm, FieldDataModule) and dm.channels == 1 and dm.sampler.strategy == "sobol"
    with pytest.raises(Exception, match=r"strategy"):
        parser.parse_string(text.replace("strategy: sobol", "strategy: poisson"))


class _RankRecorder(_Recorder):
    def on_train_end(self) -> None:
        out = self.trainer.default_root_dir + f"/rank{self.global_rank}.json"
        with open(out, "w") as f:
            json.dump(self.seen, f)


@pytest.mark.slow
def test_ddp_ranks_see_different_images_and_coordinates(tmp_path):
    """Two gloo processes (ddp_spawn): the ranks get disjoint batches, as the plan says."""
    dm = _dm()
    trainer = _trainer(
        tmp_path, devices=2, strategy="ddp_spawn", limit_train_batches=3, limit_val_batches=0
    )
    trainer.fit_loop.max_epochs = 1
    trainer.fit(_RankRecorder(), datamodule=dm)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 3
    for a, b in zip(*seen, strict=True):
        assert a[2] != b[2] and a[3] != b[3], "ranks must not share images or coordinates"
    # the same batches as the plan of each rank predicts
    dm.setup()
    for rank in range(2):
        plan = BatchPlan(dm.source, dm.train_indices, 8, [8], True, seed=0, rank=rank, world_size=2)
        batch = FieldCollate(dm.sampler)(plan.batch(0, 0))
        assert seen[rank][0][3] == int(batch.indices.sum())
