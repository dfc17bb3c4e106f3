"""Data: image sources, coordinate subsampling and the DataModule.

Typical YAML (LightningCLI)::

    data:
      class_path: lightning_infdiff.data.FieldDataModule
      init_args:
        source:
          class_path: lightning_infdiff.data.MNISTDigits
        resolution: 32
        subsample_rate: 4
        strategy: uniform
"""

from .bundled import (
    SKIMAGE_PHOTO_LICENCES,
    SKIMAGE_PHOTOS,
    AnimalSilhouettes,
    ArraySource,
    MNISTDigits,
    SkimagePhotos,
)
from .datamodule import FieldDataModule
from .folder import IMAGE_EXTENSIONS, ImageFolder
from .loader import BatchPlan, FieldCollate, FieldLoader, FieldSample
from .procedural import GaussianBlobs
from .sources import ImageSource, split_indices
from .subsample import CoordinateSampler, Strategy, qmc_indices

__all__ = [
    "AnimalSilhouettes",
    "ArraySource",
    "BatchPlan",
    "CoordinateSampler",
    "FieldCollate",
    "FieldDataModule",
    "FieldLoader",
    "FieldSample",
    "GaussianBlobs",
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "ImageSource",
    "MNISTDigits",
    "SKIMAGE_PHOTOS",
    "SKIMAGE_PHOTO_LICENCES",
    "SkimagePhotos",
    "Strategy",
    "qmc_indices",
    "split_indices",
]
