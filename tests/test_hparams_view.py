"""TensorBoard's HParams tab lists every run: its hyperparameters and its metric tags."""

from __future__ import annotations

import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from test_fault import tiny_dm, tiny_module, trainer

from lightning_infdiff.callbacks import HParamsView
from lightning_infdiff.callbacks.hparams import flat_hparams


def test_flat_hparams_keeps_numbers_and_writes_the_rest_as_text():
    flat = flat_hparams({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x", "f": True}, "model.")
    assert flat == {"model.a.b": 1, "model.a.c": "[1, 2]", "model.a.d": "None", "model.e": "x", "model.f": True}


def test_every_fit_fills_the_hparams_tab_with_its_hyperparameters_and_metrics(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), name="run", default_hp_metric=False)
    t = trainer(tmp_path, [HParamsView()], logger=logger, max_steps=3, val_check_interval=3)
    t.fit(tiny_module(), datamodule=tiny_dm())
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"val/loss", "train/loss"}
    session = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["model.denoiser"].string_value == "SparseNeuralOperator"  # (from a config: its class_path)
    assert session.hparams["data.batch_size"].number_value == 4
    assert session.hparams["trainer.precision"].string_value == "32-true"
    # the metric values come from the scalars the run logs anyway (nothing extra, no placeholder)
    assert len(acc.Scalars("val/loss")) == 1  # one validation, at the end of step 3
    assert "hp_metric" not in acc.Tags()["scalars"]


def test_without_the_callback_lightning_leaves_the_tab_empty(tmp_path):
    """Control: why the callback exists (default_hp_metric: false, as in configs/base.yaml)."""
    logger = TensorBoardLogger(str(tmp_path), name="run", default_hp_metric=False)
    t = trainer(tmp_path, [], logger=logger, max_steps=3, val_check_interval=3)
    t.fit(tiny_module(), datamodule=tiny_dm())
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    with pytest.raises(KeyError, match="hparams"):
        acc.PluginTagToContent("hparams")
