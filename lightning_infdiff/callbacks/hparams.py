"""TensorBoard's HParams tab for every run: the run's hyperparameters against its metrics.

TensorBoard lists a run in the HParams tab only when the run declares which scalar tags are its
metrics. Lightning declares them only through ``hp_metric`` (``default_hp_metric: true``, a
placeholder value of -1 logged as a scalar), so with it switched off the tab stays empty. This
callback writes the declaration once at the start of ``fit``: the flattened hyperparameters of the
model and the data, and the metric tags the run logs anyway (``val/loss``, ``train/loss`` and every
``FIDCallback`` metric). TensorBoard then shows each metric's last logged value beside the run's
hyperparameters; nothing extra is logged as a scalar.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from .fid import FIDCallback

__all__ = ["HParamsView", "flat_hparams"]


def flat_hparams(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as ``{"a.b.c": value}``, with values TensorBoard accepts (numbers,
    strings and booleans as they are; lists, ``None`` and other objects as their text)."""
    if hasattr(tree, "items"):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flat_hparams(value, f"{prefix}{key}."))
        return out
    value = tree if isinstance(tree, (bool, int, float, str)) else str(tree)
    return {prefix.rstrip("."): value}


class HParamsView(L.Callback):
    """Declare the run's hyperparameters and metric tags for TensorBoard's HParams tab.

    Args:
        metrics: scalar tags to show as the run's metrics, besides those of any ``FIDCallback``.
    """

    def __init__(self, metrics: list[str] | None = None) -> None:
        self.metrics = list(metrics) if metrics is not None else ["val/loss", "train/loss"]

    def tags(self, trainer: L.Trainer) -> list[str]:
        """The metric tags: ``metrics`` and ``<metric>/<H>x<W>`` for each FIDCallback metric and grid."""
        tags = list(self.metrics)
        for cb in trainer.callbacks:
            if isinstance(cb, FIDCallback):
                tags += [f"{name}/{grid[0]}x{grid[1]}" for name, grid in cb.metrics if f"{name}/{grid[0]}x{grid[1]}" not in tags]
        return tags

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        from torch.utils.tensorboard.summary import hparams

        params = flat_hparams(dict(pl_module.hparams), "model.")
        for part in ("denoiser", "process"):  # built in Python rather than from a config: name the class
            if not any(k.startswith(f"model.{part}") for k in params) and hasattr(pl_module, part):
                params[f"model.{part}"] = type(getattr(pl_module, part)).__name__
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and getattr(datamodule, "hparams", None):
            params.update(flat_hparams(dict(datamodule.hparams), "data."))
        params["trainer.precision"] = str(trainer.precision)
        exp, start, end = hparams(params, {tag: 0.0 for tag in self.tags(trainer)})
        for logger in loggers:
            writer = logger.experiment._get_file_writer()  # SummaryWriter's writer: no scalar is added
            for summary in (exp, start, end):
                writer.add_summary(summary)
            writer.flush()
