"""Feature extractors for Fréchet distances: the offline classifier and :func:`build_extractor`.

The interface (:class:`~.extractor.FeatureExtractor`: uint8 ``(B, C, H, W)`` -> fp32
``(B, D)``, with a ``name``, a ``metric`` log prefix and a weights hash) and its helpers live in
:mod:`.extractor` and are re-exported here; :func:`build_extractor` picks an extractor by
metric name, importing CLIP and Inception lazily.

:class:`ClassifierFeatures` is the offline metric used in tests and CPU runs: the 128-d
penultimate features of :class:`~lightning_infdiff.metrics.classifier.SmallClassifier`, trained
once on the bundled digits (or silhouettes) and cached. Images of any resolution are made grey
(channel mean) and resized to the classifier's 32x32 input (bilinear, antialiased), so the same
metric compares samples at 16², 64² or 48x80 with real images at that resolution. It is a
plumbing-grade FID, not comparable with published Inception or CLIP numbers.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from .classifier import SmallClassifier, load_classifier
from .extractor import FeatureExtractor, check_uint8, quantise, weights_hash

__all__ = ["FeatureExtractor", "ClassifierFeatures", "build_extractor", "weights_hash", "quantise", "check_uint8"]


class ClassifierFeatures(FeatureExtractor):
    """128-d features of the small classifier trained on a bundled dataset (offline FID).

    Args:
        dataset: ``digits`` or ``animals``: the classifier trained (once, cached under
            ``$LIGHTNING_INFDIFF_CACHE``) on that bundled set; ``infdiff train_classifier``
            trains it ahead of time.
        model: use this classifier instead (tests, or your own trained weights).
    """

    metric = "fid_offline"
    num_features = 128

    def __init__(self, dataset: Literal["digits", "animals"] = "digits", model: SmallClassifier | None = None) -> None:
        super().__init__()
        if dataset not in ("digits", "animals"):
            raise ValueError(f"ClassifierFeatures.dataset must be 'digits' or 'animals', got {dataset!r}")
        # the cached weights are loaded (or trained, once) on first use, so building a config is cheap
        self.classifier = model if model is not None else SmallClassifier(10)
        self.classifier.requires_grad_(False)
        self._pending: str | None = None if model is not None else dataset
        self.name = f"classifier_{dataset}" if model is None else "classifier_custom"
        self.eval()

    def _ensure_loaded(self) -> None:
        if self._pending is not None:
            trained, _ = load_classifier(self._pending)  # type: ignore[arg-type]
            self.classifier.load_state_dict(trained.state_dict())
            self._pending = None

    def weights_hash(self) -> str:
        """Hash of the (loaded) classifier weights."""
        self._ensure_loaded()
        return super().weights_hash()

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """uint8 ``(B, C, H, W)`` -> ``(B, 128)``: grey, resized to 32x32, scaled to ``[-1, 1]``."""
        check_uint8(images, "ClassifierFeatures")
        self._ensure_loaded()
        x = images.float() / 127.5 - 1.0
        return self.classifier.embed(x).float()


def build_extractor(
    metric: str,
    offline_dataset: Literal["digits", "animals"] = "digits",
    clip_model: str = "ViT-B-32",
    clip_pretrained: str | None = "openai",
    clip_weights: str | None = None,
    inception_weights: str | None = None,
) -> FeatureExtractor:
    """An extractor by metric name: ``offline``, ``clip`` or ``inception`` (CLIP/Inception lazily imported)."""
    if metric == "offline":
        return ClassifierFeatures(offline_dataset)
    if metric == "clip":
        from .clip import CLIPFeatures

        return CLIPFeatures(clip_model, clip_pretrained, clip_weights)
    if metric == "inception":
        from .inception import InceptionFeatures

        return InceptionFeatures(inception_weights)
    raise ValueError(f"unknown metric {metric!r}; expected 'offline', 'clip' or 'inception'")
