"""Reference feature statistics of a dataset, computed once per key and cached on disk.

The FID_CLIP protocol compares generated samples with the *full training set rendered at the
sample resolution* (Kynkäänniemi et al. 2023 via clean-fid, as ∞-Diff computes it). This module
streams a DataModule's source at the full grid (batch by batch, with a progress bar, any number
of images), quantises each image to uint8 exactly as generated samples are, runs the extractor,
and accumulates fp64 moments (:class:`~lightning_infdiff.metrics.frechet.FeatureStats`).

Cache: ``<cache>/fid_refs/<readable name>.pt`` where ``<cache>`` is ``$LIGHTNING_INFDIFF_CACHE``
or ``~/.cache/lightning_infdiff``. The file stores the full key: the source (class path, its
init arguments found on the instance, its length and a fingerprint of a few rendered images),
the resolution, the split (and the split's settings), the extractor (name + weights hash) and
the image count. Sources render squares. A non-square grid is rendered as its canvas
(:mod:`lightning_infdiff.coords`) shows the data: a ``stretch`` grid (a plain ``(H, W)``) is the
centre crop of the square rendering at ``max(H, W)``; a ``wide`` one is the square rendering at
``min(H, W)`` centred on the wider window, the rest filled by replicating its border (the real
data has no wider view; for digits and silhouettes on a flat background that is the background),
and its key records the canvas. A file whose stored key differs from the requested one is
reported (a warning naming the differing fields) and recomputed; it is never reused silently.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..coords import as_grid
from ..data.datamodule import FieldDataModule
from ..data.seeding import STREAM_VAL, derive_seed
from ..data.sources import ImageSource, split_indices
from .classifier import cache_dir
from .extractor import FeatureExtractor
from .frechet import FeatureStats

__all__ = ["reference_stats", "reference_key", "real_images", "render_real", "source_identity", "split_of", "Split"]

Split = Literal["train", "val", "all"]
FORMAT = "lightning_infdiff/fid_ref/1"


def _plain(value: Any) -> Any:
    """JSON-able form of an init argument (paths and numbers as text, arrays by hash)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return "sha256:" + hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]
    return str(value)


def source_identity(source: ImageSource, resolution: int) -> dict[str, Any]:
    """Class path, init arguments (as stored on the instance), length and a content fingerprint.

    The fingerprint hashes examples ``0``, ``n//2`` and ``n-1`` rendered at ``resolution`` (the
    deterministic validation rendering), so replaced files or a changed bundled set change the key.
    """
    cls = type(source)
    args = {}
    for name in inspect.signature(cls.__init__).parameters:
        if name == "self":
            continue
        for attr in (name, f"_{name}"):
            if hasattr(source, attr):
                args[name] = _plain(getattr(source, attr))
                break
        else:
            args[name] = "<not stored>"
    n = len(source)
    h = hashlib.sha256()
    for index in sorted({0, n // 2, n - 1}):
        rng = np.random.default_rng(derive_seed(0, STREAM_VAL, index))
        image, _ = source.load(index, resolution, rng, False)
        h.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "args": args, "len": n, "fingerprint": h.hexdigest()[:16]}


def split_of(dm: FieldDataModule, split: Split) -> np.ndarray:
    """Indices of ``split`` with the DataModule's split settings (``all``: every example)."""
    n = len(dm.source)
    if split == "all":
        return np.arange(n)
    train, val = split_indices(n, dm.val_fraction, dm.val_size, dm.split_seed)
    if split == "train":
        return train
    if split == "val":
        return val
    raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")


def reference_key(
    dm: FieldDataModule, extractor: FeatureExtractor, resolution: tuple[int, int], split: Split, count: int
) -> dict[str, Any]:
    """The full cache key (see the module docstring)."""
    h, w = resolution
    key = {
        "format": FORMAT,
        "dataset": source_identity(dm.source, h),
        "resolution": [int(h), int(w)],
        "split": split,
        "split_settings": {"val_fraction": dm.val_fraction, "val_size": dm.val_size, "split_seed": dm.split_seed},
        "extractor": extractor.cache_identity(),
        "count": int(count),
    }
    if not as_grid(resolution).unit:
        key["canvas"] = as_grid(resolution).canvas
    return key


def _cache_path(root: Path, key: dict[str, Any]) -> Path:
    cls = key["dataset"]["class"].rsplit(".", 1)[-1]
    h, w = key["resolution"]
    canvas = f"_{key['canvas']}" if key.get("canvas", "stretch") != "stretch" else ""
    name = f"{cls}_{h}x{w}{canvas}_{key['split']}_{key['extractor']['name']}_n{key['count']}.pt"
    return root / "fid_refs" / name.replace("/", "-")


def _diff(stored: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(stored) | set(wanted)):
        a, b = stored.get(k, "<missing>"), wanted.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: cached {json.dumps(a)[:80]} != wanted {json.dumps(b)[:80]}")
    return out


def render_real(source: ImageSource, indices: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """Real images ``(B, C, H, W)`` in ``[-1, 1]`` on ``grid`` as its canvas shows them (see the
    module docstring): the deterministic validation rendering."""
    g = as_grid(grid)
    h, w = g
    wide = not g.unit and g.canvas == "wide"
    side = min(h, w) if wide else max(h, w)
    images = []
    for index in indices:
        rng = np.random.default_rng(derive_seed(0, STREAM_VAL, int(index)))
        image, _ = source.load(int(index), side, rng, False)
        images.append(torch.from_numpy(np.asarray(image, dtype=np.float32)))
    x = torch.stack(images)
    if wide:  # the square at the window's centre, the border replicated beyond it
        top, left = (h - side) // 2, (w - side) // 2
        x = F.pad(x, (left, w - side - left, top, h - side - top), mode="replicate")
    elif (h, w) != (side, side):  # stretch: centre crop of the square rendering
        top, left = (side - h) // 2, (side - w) // 2
        x = x[:, :, top : top + h, left : left + w]
    return x


def real_images(source: ImageSource, indices: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """uint8 ``(B, C, H, W)``: :func:`render_real` quantised as generated samples are."""
    return ((render_real(source, indices, grid).clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def compute_stats(
    dm: FieldDataModule,
    extractor: FeatureExtractor,
    resolution: tuple[int, int],
    indices: np.ndarray,
    batch_size: int = 64,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> FeatureStats:
    """Stream ``indices`` of the source through the extractor (no caching)."""
    from tqdm.auto import tqdm

    h, w = resolution
    stats = FeatureStats.empty(extractor.num_features)
    bar = tqdm(total=len(indices), desc=f"reference {extractor.name} {h}x{w}", disable=not progress, unit="img")
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        stats.update(extractor(real_images(dm.source, chunk, resolution).to(device)))
        bar.update(len(chunk))
    bar.close()
    return stats


def reference_stats(
    dm: FieldDataModule,
    extractor: FeatureExtractor,
    resolution: tuple[int, int] | int,
    split: Split = "train",
    count: int | None = None,
    batch_size: int = 64,
    cache: str | Path | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> FeatureStats:
    """Reference statistics of ``split`` at ``resolution``: loaded from the cache when the stored
    key matches, else computed (streaming) and written.

    Args:
        dm: the DataModule whose ``source`` and split settings define the real data.
        extractor: the feature extractor.
        resolution: ``(H, W)`` (a :class:`~lightning_infdiff.coords.Grid` chooses the canvas of a
            non-square grid) or a side; images are rendered at the full grid.
        split: ``train`` (the protocol's choice), ``val`` or ``all``.
        count: use the first ``count`` examples of the split (default: all of it).
        batch_size: images per extractor batch.
        cache: cache root (default ``$LIGHTNING_INFDIFF_CACHE`` or ``~/.cache/lightning_infdiff``);
            ``False``-like empty string disables caching.
        progress: show a tqdm progress bar.
        device: where the extractor runs.
    """
    hw = as_grid((resolution, resolution) if isinstance(resolution, int) else resolution)
    indices = split_of(dm, split)
    if count is not None:
        if count < 2 or count > len(indices):
            raise ValueError(f"reference count must be in [2, {len(indices)}] for the {split} split, got {count}")
        indices = indices[:count]
    key = json.loads(json.dumps(reference_key(dm, extractor, hw, split, len(indices)), sort_keys=True))
    if cache == "":
        return compute_stats(dm, extractor, hw, indices, batch_size, progress, device)
    path = _cache_path(Path(cache) if cache is not None else cache_dir(), key)
    if path.is_file():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        stored_key = json.loads(stored.get("key", "{}")) if isinstance(stored, dict) else {}
        if stored_key == key:
            return FeatureStats.from_dict(stored["stats"])
        diff = _diff(stored_key, key) or ["unreadable key"]
        warnings.warn(
            f"reference statistics {path} were computed for another key and are recomputed: " + "; ".join(diff[:6]),
            stacklevel=2,
        )
    stats = compute_stats(dm, extractor, hw, indices, batch_size, progress, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"key": json.dumps(key, sort_keys=True), "stats": stats.to_dict()}, tmp)
    tmp.replace(path)
    return stats
