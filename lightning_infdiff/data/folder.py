"""Any folder of images, searched recursively.

Bad input is never skipped silently: unreadable or truncated files are collected while the
folder is checked and reported in one summary warning (or, with ``strict=True``, the first one
raises naming the file); images smaller than the training resolution are upsampled with one
summary warning (or rejected with ``strict=True``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from PIL import Image, ImageOps

from ..errors import UsageError
from .convert import random_crop, resize_center_crop, to_float, to_rgb_or_gray
from .sources import ImageSource

__all__ = ["ImageFolder", "IMAGE_EXTENSIONS"]

#: File extensions searched (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
_SHOW = 5  # how many file names a summary message lists


def _summary(items: list[str], total: int) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f" (and {total - _SHOW} more)" if total > _SHOW else "")


class ImageFolder(ImageSource):
    """Images from a folder tree (FFHQ, CelebA-HQ, LSUN exports, your own photos).

    Args:
        root: folder searched recursively for ``.png .jpg .jpeg .webp .bmp .tif .tiff`` files.
        channels: 3 for RGB output, 1 for grayscale. Palette, RGBA (composited over white),
            CMYK, 16-bit and grayscale files are converted.
        crop: ``"center"`` resizes the shorter side to the resolution and takes the centre
            square; ``"random"`` takes a random square at the file's native pixel density
            (training only; validation always uses the centre crop).
        labels: use the name of each file's first-level sub-folder as its class (sorted
            names -> ``0..K-1``); every file must then sit in a sub-folder.
        strict: raise on the first unreadable file or image smaller than the training
            resolution, instead of skipping / upsampling it with a summary warning.
        verify: decode every file once when the DataModule is set up, so that broken files are
            found before training (JPEGs are decoded at reduced size, so this is fast). With
            ``False`` only headers are read and a file that fails later is replaced by the next
            readable one with a warning (or raises with ``strict=True``).
    """

    def __init__(
        self,
        root: str,
        channels: int = 3,
        crop: Literal["center", "random"] = "center",
        labels: bool = False,
        strict: bool = False,
        verify: bool = True,
    ) -> None:
        if channels not in (1, 3):
            raise UsageError(f"ImageFolder: data.source.init_args.channels must be 1 or 3, got {channels}")
        if crop not in ("center", "random"):
            raise UsageError(f"ImageFolder: data.source.init_args.crop must be 'center' or 'random', got {crop!r}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"ImageFolder: root {str(root)!r} is not a directory (set data.source.init_args.root to your images)"
            )
        self.channels = channels
        self.crop = crop
        self.labels = labels
        self.strict = strict
        self.verify = verify
        self.files: list[Path] = []
        self.targets: list[int] | None = None
        self.class_names: list[str] = []
        self.num_classes = None
        self._prepared_for: int | None = None
        self._warned_runtime: set[str] = set()

    # ---------------------------------------------------------------- scanning
    def _find(self) -> list[Path]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder: {str(self.root)!r} is not a directory")
        files = sorted(
            p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            raise FileNotFoundError(
                f"ImageFolder: no supported images found in {str(self.root)!r} (searched recursively "
                f"for extensions {', '.join(IMAGE_EXTENSIONS)}, case-insensitive)"
            )
        return files

    def _check(self, path: Path, max_res: int) -> tuple[int, int]:
        """Open (and with ``verify`` decode) one file; return its size ``(W, H)``."""
        with Image.open(path) as img:
            size = img.size
            if self.verify:
                img.draft(None, (max_res, max_res))
                img.load()
        return size

    def prepare(self, resolutions: list[int]) -> None:
        """Scan the folder, check every file, and warn or raise about bad input."""
        max_res = max(resolutions)
        if self._prepared_for is not None and self._prepared_for >= max_res:
            return
        good: list[Path] = []
        bad: list[str] = []
        small: list[str] = []
        for path in self._find():
            try:
                w, h = self._check(path, max_res)
            except Exception as err:  # PIL raises many types for broken files
                if self.strict:
                    raise OSError(
                        f"ImageFolder: cannot read image file {str(path)!r}: {type(err).__name__}: {err}"
                    ) from err
                bad.append(f"{path} ({type(err).__name__}: {err})")
                continue
            if min(w, h) < max_res:
                if self.strict:
                    raise UsageError(
                        f"ImageFolder: image {str(path)!r} is {w}x{h}, smaller than the training "
                        f"resolution {max_res} (strict=True; set strict=False to upsample it)"
                    )
                small.append(f"{path.name} ({w}x{h})")
            good.append(path)
        if bad:  # one summary, printed once per run (rank 0), not per file or per process
            rank_zero_warn(
                f"ImageFolder: skipped {len(bad)} unreadable image file(s) in {str(self.root)!r}: "
                f"{_summary(bad, len(bad))}",
                stacklevel=3,
            )
        if not good:
            raise FileNotFoundError(
                f"ImageFolder: none of the image files in {str(self.root)!r} could be read"
            )
        if small:
            rank_zero_warn(
                f"ImageFolder: {len(small)} image(s) in {str(self.root)!r} are smaller than the "
                f"training resolution {max_res} and will be upsampled: {_summary(small, len(small))}",
                stacklevel=3,
            )
        self.files = good
        self._set_labels()
        self._prepared_for = max_res

    def _set_labels(self) -> None:
        if not self.labels:
            self.targets, self.class_names, self.num_classes = None, [], None
            return
        rel = [p.relative_to(self.root).parts for p in self.files]
        loose = [str(p) for p, parts in zip(self.files, rel, strict=True) if len(parts) < 2]
        if loose:
            raise UsageError(
                f"ImageFolder: labels=True needs every image inside a class sub-folder of "
                f"{str(self.root)!r}; found {len(loose)} at the top level: {_summary(loose, len(loose))}"
            )
        self.class_names = sorted({parts[0] for parts in rel})
        lookup = {name: i for i, name in enumerate(self.class_names)}
        self.targets = [lookup[parts[0]] for parts in rel]
        self.num_classes = len(self.class_names)

    # ---------------------------------------------------------------- loading
    def __len__(self) -> int:
        if self._prepared_for is None:
            self.prepare([2])
        return len(self.files)

    def _decode(
        self, path: Path, resolution: int | tuple[int, int], rng: np.random.Generator, train: bool
    ) -> np.ndarray:
        side = resolution if isinstance(resolution, int) else max(resolution)
        with Image.open(path) as img:
            if not (train and self.crop == "random"):
                img.draft(None, (side, side))
            img.load()  # decode before the file closes
            img = to_rgb_or_gray(ImageOps.exif_transpose(img), self.channels)
        if train and self.crop == "random":
            out = random_crop(img, resolution, rng)
        else:
            out = resize_center_crop(img, resolution)
        return to_float(out)

    def load(
        self, index: int, resolution: int, rng: np.random.Generator, train: bool
    ) -> tuple[np.ndarray, int | None]:
        """Decode, convert and crop file ``index`` (see :class:`ImageSource`)."""
        return self._load(index, resolution, rng, train)

    def load_rect(
        self, index: int, size: tuple[int, int], rng: np.random.Generator, train: bool
    ) -> tuple[np.ndarray, int | None]:
        """File ``index`` cropped to an ``H x W`` window of the file itself (see :meth:`ImageSource.load_rect`)."""
        return self._load(index, (int(size[0]), int(size[1])), rng, train)

    def _load(
        self, index: int, resolution: int | tuple[int, int], rng: np.random.Generator, train: bool
    ) -> tuple[np.ndarray, int | None]:
        n = len(self.files)
        for attempt in range(n):
            i = (index + attempt) % n
            path = self.files[i]
            try:
                image = self._decode(path, resolution, rng, train)
            except Exception as err:
                if self.strict:
                    raise OSError(
                        f"ImageFolder: cannot read image file {str(path)!r}: {type(err).__name__}: {err}"
                    ) from err
                if str(path) not in self._warned_runtime:
                    self._warned_runtime.add(str(path))
                    warnings.warn(
                        f"ImageFolder: unreadable image file {str(path)!r} ({type(err).__name__}: {err}) replaced by the next "
                        "file; run with verify=True to find all broken files before training",
                        stacklevel=2,
                    )
                continue
            return image, (None if self.targets is None else self.targets[i])
        raise OSError(f"ImageFolder: no readable image file left in {str(self.root)!r}")
