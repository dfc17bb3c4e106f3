"""The DataModule inside a real Lightning Trainer: epochs, checkpoints and mid-epoch resume."""

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_infdiff.batch import FieldBatch
from lightning_infdiff.data import FieldDataModule, GaussianBlobs


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
    return L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
        **kw,
    )


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
        _trainer(tmp_path).fit(resumed, datamodule=_dm(), ckpt_path=path)
        assert resumed.seen == ref.seen[step:], f"resume from step {step} diverged"
