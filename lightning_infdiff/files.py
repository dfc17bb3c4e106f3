"""Atomic file writes: a kill or a full disk during a write never leaves a partial file.

The data goes to a temporary file in the target's folder, is flushed and ``fsync``ed, and is
then renamed over the target with ``os.replace``, which POSIX makes atomic: readers see the old
file or the new one, never a mix. Checkpoints (:mod:`lightning_infdiff.callbacks.atomic_checkpoint`),
exported weights and sample images are written this way.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported everywhere (e.g. Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file (``0o666`` minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(data: bytes, path: str | Path, what: str = "checkpoint") -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``.

    Raises:
        OSError: naming ``path`` (with ``errno.ENOSPC`` spelled out for a full disk); the previous
            content of ``path``, if any, is untouched and no temporary file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())  # mkstemp creates 0600; checkpoints are shared like any file
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            reason = "the disk is full (ENOSPC)" if err.errno == errno.ENOSPC else f"{type(err).__name__}: {err}"
            kept = f"the previous {what} there is intact" if path.exists() else "no file was left there"
            raise OSError(err.errno, f"could not write {what} {str(path)!r}: {reason}; {kept}") from err
        raise
    _fsync_dir(path.parent)
    return path
