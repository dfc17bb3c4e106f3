"""Atomic checkpoint writes: a killed process or a full disk never leaves a corrupt checkpoint.

Lightning's default writer serialises into memory and then writes over the target file: a
process killed (or a disk filling up) during that write leaves a truncated ``last.ckpt`` and the
previous one is gone. :class:`AtomicCheckpointIO` writes to a temporary file in the same folder,
flushes and ``fsync``s it, and only then renames it over the target with ``os.replace``, which
POSIX makes atomic: readers see the old file or the new one, never a mix. On failure the
temporary file is removed and an ``OSError`` names the target and says the previous file is
intact. :class:`AtomicModelCheckpoint` is ``ModelCheckpoint`` that installs this writer and, on
preemption (SIGTERM), saves ``last`` before the process exits.
"""

from __future__ import annotations

import io
import pickle
import re
import signal
import threading
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from ..errors import UsageError
from ..files import atomic_write_bytes

__all__ = ["AtomicCheckpointIO", "AtomicModelCheckpoint", "atomic_write_bytes", "load_error", "resume_error"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic (temporary file, ``fsync``, ``os.replace``).

    Remote paths (``s3://``, ...) use Lightning's writer: object stores replace whole objects.
    Use it as ``trainer.plugins`` or through :class:`AtomicModelCheckpoint`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Serialise ``checkpoint`` in memory, then write it atomically to ``path``."""
        if storage_options is not None:
            raise TypeError(
                f"`storage_options` is not supported by {type(self).__name__}, got {storage_options!r}"
            )
        fs = get_filesystem(path)
        if "file" not in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(buffer.getvalue(), str(path))


    def load_checkpoint(self, path: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Lightning's reader, with an error that names the file when it is truncated, unsafe or not a checkpoint."""
        try:
            return super().load_checkpoint(path, *args, **kwargs)
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001 - torch raises many types for broken files
            raise resume_error(path, err) from err


def refused_global(err: BaseException) -> str | None:
    """The object a weights-only load refused (``"builtins.print"``), or ``None`` when the file is
    simply unreadable. Only torch's "Unsupported global" means the file holds code to run; any
    other unpickling failure (random bytes, a truncated or foreign file) means it is corrupt."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    return match.group(1) if match else None


def load_error(path: Any, err: BaseException, action: str = "load") -> UsageError:
    """A one-line :class:`UsageError` naming the checkpoint that cannot be read, and why.

    Torch's own message is not relayed: it advises ``weights_only=False``, which would run
    whatever code an untrusted file holds.
    """
    what = refused_global(err)
    if what is not None:
        return UsageError(
            f"refusing to {action} {str(path)!r}: it holds a pickled {what}, which weights-only loading does "
            "not allow (a checkpoint from an untrusted source could run code)"
        )
    detail = str(err).splitlines()[0].strip() if str(err) else ""
    if isinstance(err, pickle.UnpicklingError) or "weights_only" in detail or "Weights only" in detail:
        detail = ""  # torch's advice about weights_only, not a description of the file
    return UsageError(
        f"cannot {action} {str(path)!r}: the file is corrupt (truncated, damaged, or not written by "
        f"torch.save){': ' + type(err).__name__ + ': ' + detail if detail else ''}"
    )


def resume_error(path: Any, err: BaseException, command: str = "fit") -> UsageError:
    """:func:`load_error` for ``--ckpt_path`` of ``fit`` (resume) or ``validate``/``test``/``predict`` (load)."""
    return load_error(path, err, "resume from" if command == "fit" else "load")


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` with atomic writes and a ``last`` checkpoint on preemption.

    Takes every ``ModelCheckpoint`` argument (``every_n_train_steps`` for periodic checkpoints by
    steps, ``save_last``, ``monitor``, ...). In ``setup`` it replaces the trainer's default
    checkpoint writer by :class:`AtomicCheckpointIO` (so every checkpoint the trainer writes,
    including other callbacks', is atomic). ``last`` is also saved at the final step, whatever
    ended the run (``max_steps``, ``max_time``, early stopping). When Lightning turns a SIGTERM into its
    ``SIGTERMException``, the ``last`` checkpoint is written before the process exits
    (``save_on_preemption``), so a preempted job resumes where it stopped.

    Under several processes (DDP) Lightning's own SIGTERM handler runs a collective inside the
    signal handler and forwards the signal to the other ranks, so when a scheduler signals every
    rank at once the collectives no longer match and the job hangs. Here a SIGTERM only notes that
    it came; at the end of each training batch the ranks agree (one all-reduce) whether any of
    them got one, and all stop at that same step, save ``last`` together and exit.

    Args:
        save_on_preemption: save ``last`` (needs ``save_last``) when the run ends on SIGTERM.
        **kwargs: ``ModelCheckpoint`` arguments.
    """

    def __init__(self, *args: Any, save_on_preemption: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.save_on_preemption = save_on_preemption
        self._sigterm_pending = False
        self._defer_sigterm = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Under DDP, replace Lightning's SIGTERM handler (installed just before) by a note."""
        super().on_train_start(trainer, pl_module)
        self._sigterm_pending = False
        self._defer_sigterm = (
            trainer.world_size > 1 and self.save_on_preemption and bool(self.save_last)
            and threading.current_thread() is threading.main_thread()
        )  # one callback per run does this: the one that saves ``last``
        if self._defer_sigterm:  # Lightning restores the original handler at teardown
            signal.signal(signal.SIGTERM, self._note_sigterm)

    def _note_sigterm(self, signum: int, frame: Any) -> None:
        self._sigterm_pending = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        """Under DDP, stop every rank at this step if any rank got a SIGTERM (Lightning then raises
        ``SIGTERMException`` on all of them at the end of the step)."""
        if self._defer_sigterm and trainer.strategy.reduce_boolean_decision(self._sigterm_pending, all=False):
            trainer._signal_connector.received_sigterm = True  # what Lightning's handler would have set
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Install :class:`AtomicCheckpointIO` unless a custom writer is configured."""
        io_plugin = trainer.strategy.checkpoint_io
        if type(io_plugin) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        elif not isinstance(io_plugin, AtomicCheckpointIO):
            rank_zero_warn(
                f"AtomicModelCheckpoint: the trainer uses a custom checkpoint writer {type(io_plugin).__name__}; "
                "its writes are not made atomic"
            )
        super().setup(trainer, pl_module, stage)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Save ``last`` at the final step (also when a time limit or early stop ended the run)."""
        if (
            self.save_last
            and trainer.global_step > 0
            and self._last_global_step_saved != trainer.global_step
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """On SIGTERM save ``last``; other exceptions follow ``ModelCheckpoint(save_on_exception=...)``."""
        if (
            isinstance(exception, SIGTERMException)
            and self.save_on_preemption
            and self.save_last
            and not trainer.sanity_checking
            and not trainer.fast_dev_run
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            rank_zero_info(f"AtomicModelCheckpoint: SIGTERM received, saved {self.last_model_path} at step {trainer.global_step}")
            return
        super().on_exception(trainer, pl_module, exception)
