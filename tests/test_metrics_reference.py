"""Offline classifier features and the reference-statistics cache (keyed, never silently stale)."""

from __future__ import annotations

import pytest
import torch

from lightning_infdiff.data import FieldDataModule, GaussianBlobs
from lightning_infdiff.metrics import ClassifierFeatures, FeatureStats, quantise
from lightning_infdiff.metrics.classifier import SmallClassifier
from lightning_infdiff.metrics.reference import real_images, reference_stats, split_of


class Counting(ClassifierFeatures):
    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        super().__init__(model=SmallClassifier(10))
        self.images_seen = 0

    def forward(self, images):
        self.images_seen += images.shape[0]
        return super().forward(images)


def datamodule(seed: int = 0, length: int = 40) -> FieldDataModule:
    return FieldDataModule(GaussianBlobs(length, 1, seed=seed), resolution=16, batch_size=4, val_size=8)


def test_classifier_features_take_uint8_at_any_resolution():
    feats = Counting()
    for hw in [(8, 8), (28, 28), (48, 80)]:
        out = feats(torch.randint(0, 256, (3, 1, *hw), dtype=torch.uint8))
        assert out.shape == (3, 128)
    rgb = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    grey = rgb.float().mean(1, keepdim=True)
    # RGB is made grey by the channel mean before the classifier
    torch.testing.assert_close(feats(rgb), feats.classifier.embed(grey / 127.5 - 1.0))
    with pytest.raises(ValueError, match="uint8"):
        feats(torch.rand(1, 1, 8, 8))
    assert not feats.training and not feats.train().training


def test_quantise_round_trip():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0]).view(1, 1, 2, 2)
    assert quantise(x).flatten().tolist() == [0, 64, 128, 255]


def test_reference_stats_are_cached_and_reused_only_for_the_same_key(tmp_path):
    dm, feats = datamodule(), Counting()
    first = reference_stats(dm, feats, 16, "train", cache=tmp_path, progress=False)
    n_train = len(split_of(dm, "train"))
    assert first.n == n_train == 32 and feats.images_seen == 32
    # the same statistics as a direct pass over the same rendered images
    direct = FeatureStats.empty(128)
    direct.update(feats(real_images(dm.source, split_of(dm, "train"), (16, 16))))
    torch.testing.assert_close(first.cov, direct.cov)
    feats.images_seen = 0
    again = reference_stats(datamodule(), feats, 16, "train", cache=tmp_path, progress=False)
    assert feats.images_seen == 0 and torch.equal(again.outer, first.outer)
    # another resolution, split or count is another entry
    reference_stats(dm, feats, (12, 20), "train", cache=tmp_path, progress=False)
    reference_stats(dm, feats, 16, "val", cache=tmp_path, progress=False)
    reference_stats(dm, feats, 16, "train", count=10, cache=tmp_path, progress=False)
    assert feats.images_seen == 32 + 8 + 10
    assert len(list((tmp_path / "fid_refs").glob("*.pt"))) == 4


def test_stale_cache_is_detected_and_recomputed(tmp_path):
    dm, feats = datamodule(), Counting()
    reference_stats(dm, feats, 16, "train", cache=tmp_path, progress=False)
    # other extractor weights under the same extractor name
    other = Counting(seed=1)
    with pytest.warns(UserWarning, match="extractor.weights"):
        stats = reference_stats(dm, other, 16, "train", cache=tmp_path, progress=False)
    assert other.images_seen == 32 and stats.n == 32
    # other data (the source's seed) under the same file name
    with pytest.warns(UserWarning, match="dataset"):
        reference_stats(datamodule(seed=5), other, 16, "train", cache=tmp_path, progress=False)
    assert other.images_seen == 64
    with pytest.raises(ValueError, match="count"):
        reference_stats(dm, other, 16, "val", count=100, cache=tmp_path, progress=False)


def test_real_vs_real_is_small_and_real_vs_noise_large(tmp_path):
    from lightning_infdiff.metrics import FrechetDistance

    dm, feats = datamodule(length=120), Counting()
    ref = reference_stats(dm, feats, 16, "train", count=56, cache="", progress=False)
    fid = FrechetDistance(feats, reference=ref)
    fid.update(real_images(dm.source, split_of(dm, "train")[56:112], (16, 16)), real=False)
    real_vs_real = float(fid.compute())
    fid.reset()
    fid.update(torch.randint(0, 256, (56, 1, 16, 16), dtype=torch.uint8), real=False)
    real_vs_noise = float(fid.compute())
    assert real_vs_noise > 10 * real_vs_real
